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

static void db_free(struct store_db *db)
{
    if (db == NULL)
        return;
    /* Readers first: the last connection to close checkpoints the WAL into
     * the database and removes it, and that should be the writer. */
    for (int i = 0; i < STORE_READERS; i++)
        store_conn_close(&db->readers[i]);
    store_conn_close(&db->writer);
    if (db->lock_fd >= 0)
        close(db->lock_fd);
    free(db->path);
    free(db->conninfo);
    free(db->password);
    free(db);
}

void kms_store_free(struct kms_store *store)
{
    if (store == NULL)
        return;
    for (size_t i = 0; i < store->n; i++)
        db_free(store->db[i]);
    if (store->map != NULL)
        pthread_mutex_destroy(&store->map_mu);
    free(store->map);
    free(store);
}

static kms_err conn_init(struct store_db *s, struct store_conn *c, const char *path,
                         bool writable)
{
    KMS_ENSURE(pthread_mutex_init(&c->mu, NULL) == 0, KMS_ERR_INTERNAL,
               "store: cannot create a mutex");
    c->mu_ready = true;
    c->owner = s;
    c->writable = writable;
    if (s->pg)
        return KMS_OK; /* connected on first use; the writer by db_pg_open */
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
static kms_err lock_file(struct store_db *s)
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

/* A store of one database, taking db. */
static kms_err store_of_one(struct store_db *db, struct kms_store **out)
{
    struct kms_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        db_free(db);
        return kms_err_set(KMS_ERR_NOMEM, "store: out of memory");
    }
    s->pg = db->pg;
    s->n = 1;
    s->db[0] = db;
    *out = s;
    return KMS_OK;
}

kms_err kms_store_open(const char *path, struct kms_store **out)
{
    kms_err rc = KMS_OK;
    struct store_db *s = NULL;
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
    atomic_store(&s->ready, true);
    return store_of_one(s, out);

fail:
    db_free(s);
    return rc;
}

/* A PostgreSQL database's handle, not yet connected. */
static kms_err db_pg_new(const char *region, const char *conninfo, const char *password_source,
                         struct store_db **out)
{
    kms_err rc = KMS_OK;
    *out = NULL;
    struct kms_pg_target t = {conninfo, password_source};
    KMS_GUARD(kms_pg_target_check(&t));
    KMS_ENSURE(region == NULL || (region[0] != '\0' && strlen(region) <= KMS_REGION_MAX),
               KMS_ERR_CONFIG, "store: a region name is 1..%d bytes", KMS_REGION_MAX);

    struct store_db *s = calloc(1, sizeof(*s));
    KMS_ENSURE(s != NULL, KMS_ERR_NOMEM, "store: out of memory");
    s->pg = true;
    s->lock_fd = -1;
    if (region != NULL)
        snprintf(s->region, sizeof(s->region), "%s", region);
    s->conninfo = strdup(conninfo);
    s->password = password_source != NULL ? strdup(password_source) : NULL;
    KMS_ENSURE_GOTO(s->conninfo != NULL && (password_source == NULL || s->password != NULL),
                    fail, KMS_ERR_NOMEM, "store: out of memory");
    KMS_GUARD_GOTO(conn_init(s, &s->writer, NULL, true), fail);
    for (int i = 0; i < STORE_READERS; i++)
        KMS_GUARD_GOTO(conn_init(s, &s->readers[i], NULL, false), fail);
    *out = s;
    return KMS_OK;

fail:
    db_free(s);
    return rc;
}

/* Connect the writer, check and migrate; the caller holds the writer's
 * mutex (or is the only thread, at open). */
kms_err store_db_pg_open(struct store_db *s)
{
    struct kms_store_info info;
    KMS_GUARD(store_pg_open_writer(&s->writer));
    KMS_GUARD(store_pg_schema_info(&s->writer, &info));
    kms_log_info("store", "opened PostgreSQL database %s%s%s (schema %d, store id %s)",
                 PQdb(s->writer.pg) != NULL ? PQdb(s->writer.pg) : "?",
                 s->region[0] ? " for region " : "", s->region, info.schema_version,
                 info.store_id);
    atomic_store(&s->ready, true);
    return KMS_OK;
}

/* No file and no lock: many kmsd share the database, and what the lock
 * buys on SQLite (one writer) SERIALIZABLE transactions buy here. Readers
 * connect on first use, so an idle node holds one connection. */
kms_err kms_store_open_pg(const char *conninfo, const char *password_source,
                          struct kms_store **out)
{
    struct store_db *s = NULL;

    KMS_ENSURE(out != NULL && conninfo != NULL, KMS_ERR_USAGE, "store: open: NULL argument");
    *out = NULL;
    KMS_GUARD(db_pg_new(NULL, conninfo, password_source, &s));
    kms_err rc = store_db_pg_open(s);
    if (rc != KMS_OK) {
        db_free(s);
        return rc;
    }
    return store_of_one(s, out);
}

kms_err kms_store_open_pg_regions(const struct kms_store_pg_region *regions, size_t n,
                                  struct kms_store **out)
{
    kms_err rc = KMS_OK;
    struct kms_store *s = NULL;
    size_t opened = 0;

    KMS_ENSURE(out != NULL && (regions != NULL || n == 0), KMS_ERR_USAGE,
               "store: open: NULL argument");
    *out = NULL;
    KMS_ENSURE(n >= 1 && n <= KMS_STORE_REGIONS_MAX, KMS_ERR_CONFIG,
               "store: 1..%d regions, not %zu", KMS_STORE_REGIONS_MAX, n);
    for (size_t i = 0; i < n; i++) {
        KMS_ENSURE(regions[i].region != NULL && regions[i].conninfo != NULL, KMS_ERR_USAGE,
                   "store: open: NULL argument");
        for (size_t j = 0; j < i; j++) {
            KMS_ENSURE(strcmp(regions[i].region, regions[j].region) != 0, KMS_ERR_CONFIG,
                       "store: region %.64s is listed twice", regions[i].region);
            bool same = false;
            KMS_GUARD(kms_pg_same_database(regions[i].conninfo, regions[j].conninfo, &same));
            /* Two regions in one database would put both regions' rows
             * where either region's operators can read them. */
            KMS_ENSURE(!same, KMS_ERR_CONFIG,
                       "store: regions %.64s and %.64s name the same database", regions[j].region,
                       regions[i].region);
        }
    }

    s = calloc(1, sizeof(*s));
    KMS_ENSURE(s != NULL, KMS_ERR_NOMEM, "store: out of memory");
    s->pg = true;
    s->map = calloc(STORE_KEYMAP_SLOTS, sizeof(*s->map));
    KMS_ENSURE_GOTO(s->map != NULL, fail, KMS_ERR_NOMEM, "store: out of memory");
    KMS_ENSURE_GOTO(pthread_mutex_init(&s->map_mu, NULL) == 0, fail_map, KMS_ERR_INTERNAL,
                    "store: cannot create a mutex");
    for (size_t i = 0; i < n; i++) {
        KMS_GUARD_GOTO(
            db_pg_new(regions[i].region, regions[i].conninfo, regions[i].password_source,
                      &s->db[i]),
            fail);
        s->n = i + 1;
    }
    /* A region whose server is away does not keep the others from
     * serving: it is opened on first use. Anything else (not a Custos
     * store, newer than this build) is a configuration error. */
    for (size_t i = 0; i < n; i++) {
        rc = store_db_pg_open(s->db[i]);
        if (rc == KMS_OK) {
            opened++;
            continue;
        }
        if (rc != KMS_ERR_IO)
            goto fail;
        kms_log_warn("store", "region %s: database unreachable (%s); its requests fail until "
                     "it answers", s->db[i]->region, kms_err_detail());
        store_conn_close(&s->db[i]->writer);
        KMS_GUARD_GOTO(conn_init(s->db[i], &s->db[i]->writer, NULL, true), fail);
        rc = KMS_OK;
    }
    KMS_ENSURE_GOTO(opened > 0, fail, KMS_ERR_IO, "store: no region's database is reachable");
    *out = s;
    return KMS_OK;

fail_map:
    free(s->map);
    s->map = NULL;
fail:
    kms_store_free(s);
    return rc;
}

bool kms_store_is_pg(const struct kms_store *store)
{
    return store != NULL && store->pg;
}

static kms_err info_one(struct store_db *db, void *arg, const char *op)
{
    (void)op;
    struct store_conn *c = store_writer_take(db);
    kms_err rc = db->pg ? store_pg_schema_info(c, arg) : store_schema_info(c->db, arg);
    store_conn_give(c);
    return rc;
}

/* Every database must answer: this is the health check. The info returned
 * is the first database's. */
kms_err kms_store_info(struct kms_store *store, struct kms_store_info *out)
{
    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: info: NULL argument");
    struct kms_store_info other;
    for (size_t i = 0; i < store->n; i++) {
        KMS_GUARD(store_db_ready(store->db[i], "info"));
        KMS_GUARD(info_one(store->db[i], i == 0 ? out : &other, "info"));
    }
    return KMS_OK;
}
