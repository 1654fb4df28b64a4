/*
 * kms_store_open.c - opening and closing the store: on SQLite the file, its
 * process lock and the writer and reader connections (the writer migrates
 * the schema first); on PostgreSQL the connections to a shared database.
 */
#include "kms_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms_log.h"
#include "kms_store_internal.h"

void kms_store_free(struct kms_store *store)
{
    if (store == NULL)
        return;
    /* Readers first: the last connection to close checkpoints the WAL into
     * the database and removes it, and that should be the writer. */
    for (int i = 0; i < STORE_READERS; i++)
        store_conn_close(&store->readers[i]);
    store_conn_close(&store->writer);
    if (store->lock_fd >= 0)
        close(store->lock_fd);
    free(store->path);
    free(store->conninfo);
    free(store->password);
    free(store);
}

static kms_err conn_init(struct kms_store *s, struct store_conn *c, const char *path,
                         bool writable)
{
    KMS_ENSURE(pthread_mutex_init(&c->mu, NULL) == 0, KMS_ERR_INTERNAL,
               "store: cannot create a mutex");
    c->mu_ready = true;
    c->owner = s;
    c->writable = writable;
    if (s->pg)
        return writable ? store_pg_open_writer(c) : KMS_OK;
    return store_conn_open(path, writable, &c->db);
}

/*
 * The flock keeps a second kmsd (an overlapping restart, a mistaken second
 * instance) off the file: reconcile deletes CREATING rows, which is only safe
 * when no other process can be half-way through creating a key. It is a BSD
 * lock on our own descriptor, independent of SQLite's POSIX locks, and that
 * descriptor is closed only after every SQLite connection, so closing it
 * cannot drop a lock SQLite holds. Creating the file here also gives it mode
 * 0600, which SQLite then copies to the -wal and -shm files.
 */
static kms_err lock_file(struct kms_store *s)
{
    struct stat sb;

    s->lock_fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    KMS_ENSURE(s->lock_fd >= 0, KMS_ERR_IO, "store: open %s: %s", s->path, strerror(errno));
    KMS_ENSURE(fstat(s->lock_fd, &sb) == 0, KMS_ERR_IO, "store: stat %s: %s", s->path,
               strerror(errno));
    KMS_ENSURE(S_ISREG(sb.st_mode), KMS_ERR_CONFIG, "store: %s is not a regular file", s->path);
    if ((sb.st_mode & 077) != 0)
        kms_log_warn("store", "database %s has mode %04o; 0600 is enough", s->path,
                     (unsigned)(sb.st_mode & 07777));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        KMS_ENSURE(errno != EWOULDBLOCK, KMS_ERR_CONFIG,
                   "store: %s is in use by another process", s->path);
        return kms_err_set(KMS_ERR_IO, "store: lock %s: %s", s->path, strerror(errno));
    }
    return KMS_OK;
}

kms_err kms_store_open(const char *path, struct kms_store **out)
{
    kms_err rc = KMS_OK;
    struct kms_store *s = NULL;
    struct kms_store_info info;

    KMS_ENSURE(out != NULL && path != NULL, KMS_ERR_USAGE, "store: open: NULL argument");
    *out = NULL;
    /* A real file is required: WAL and the process lock need one, and a
     * "file:" URI would be opened by SQLite somewhere other than our lock. */
    KMS_ENSURE(path[0] != '\0' && strcmp(path, ":memory:") != 0 &&
                   strncmp(path, "file:", 5) != 0,
               KMS_ERR_CONFIG, "store: the database path must name a file");

    s = calloc(1, sizeof(*s));
    KMS_ENSURE(s != NULL, KMS_ERR_NOMEM, "store: out of memory");
    s->lock_fd = -1;
    s->path = strdup(path);
    KMS_ENSURE_GOTO(s->path != NULL, fail, KMS_ERR_NOMEM, "store: out of memory");
    KMS_GUARD_GOTO(lock_file(s), fail);
    /* The writer first: it migrates the schema the readers will query. */
    KMS_GUARD_GOTO(conn_init(s, &s->writer, path, true), fail);
    for (int i = 0; i < STORE_READERS; i++)
        KMS_GUARD_GOTO(conn_init(s, &s->readers[i], path, false), fail);

    KMS_GUARD_GOTO(store_schema_info(s->writer.db, &info), fail);
    kms_log_info("store", "opened %s (schema %d, store id %s)", path, info.schema_version,
                 info.store_id);
    *out = s;
    return KMS_OK;

fail:
    kms_store_free(s);
    return rc;
}

/* No file and no lock: many kmsd share the database, and what the lock
 * buys on SQLite (one writer) SERIALIZABLE transactions buy here. Readers
 * connect on first use, so an idle node holds one connection. */
kms_err kms_store_open_pg(const char *conninfo, const char *password_source,
                          struct kms_store **out)
{
    kms_err rc = KMS_OK;
    struct kms_store *s = NULL;
    struct kms_store_info info;

    KMS_ENSURE(out != NULL && conninfo != NULL, KMS_ERR_USAGE, "store: open: NULL argument");
    *out = NULL;
    struct kms_pg_target t = {conninfo, password_source};
    KMS_GUARD(kms_pg_target_check(&t));

    s = calloc(1, sizeof(*s));
    KMS_ENSURE(s != NULL, KMS_ERR_NOMEM, "store: out of memory");
    s->pg = true;
    s->lock_fd = -1;
    s->conninfo = strdup(conninfo);
    s->password = password_source != NULL ? strdup(password_source) : NULL;
    KMS_ENSURE_GOTO(s->conninfo != NULL && (password_source == NULL || s->password != NULL),
                    fail, KMS_ERR_NOMEM, "store: out of memory");
    KMS_GUARD_GOTO(conn_init(s, &s->writer, NULL, true), fail);
    for (int i = 0; i < STORE_READERS; i++)
        KMS_GUARD_GOTO(conn_init(s, &s->readers[i], NULL, false), fail);

    KMS_GUARD_GOTO(store_pg_schema_info(&s->writer, &info), fail);
    kms_log_info("store", "opened PostgreSQL database %s (schema %d, store id %s)",
                 PQdb(s->writer.pg) != NULL ? PQdb(s->writer.pg) : "?", info.schema_version,
                 info.store_id);
    *out = s;
    return KMS_OK;

fail:
    kms_store_free(s);
    return rc;
}

bool kms_store_is_pg(const struct kms_store *store)
{
    return store != NULL && store->pg;
}

kms_err kms_store_info(struct kms_store *store, struct kms_store_info *out)
{
    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: info: NULL argument");
    struct store_conn *c = store_writer_take(store);
    kms_err rc = store->pg ? store_pg_schema_info(c, out) : store_schema_info(c->db, out);
    store_conn_give(c);
    return rc;
}
