/*
 * test_kms_notify.c - the sd_notify datagram protocol against a socket the
 * test binds (a path and an abstract name), the watchdog variables, and the
 * operational log's file mode: JSON lines, and a reopen after rotation that
 * lets the old file go.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "kms_log.h"
#include "kms_notify.h"
#include "testenv.h"

/* Bind a datagram socket at path ("@name": abstract) and return it. */
static int bind_dgram(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    memcpy(sa.sun_path, path, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    if (path[0] == '@') {
        sa.sun_path[0] = '\0';
        len--;
    }
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, len), 0);
    return fd;
}

static void receive(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    ck_assert_int_gt(n, 0);
    buf[n] = '\0';
    ck_assert_str_eq(buf, want);
}

START_TEST(notify_path_socket)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/notify-%d.sock", testenv_work_dir(), (int)getpid());
    unlink(path);
    int fd = bind_dgram(path);
    setenv("NOTIFY_SOCKET", path, 1);
    ck_assert_int_eq(kms_notify("READY=1\nSTATUS=serving"), KMS_OK);
    receive(fd, "READY=1\nSTATUS=serving");
    ck_assert_int_eq(kms_notify("WATCHDOG=1"), KMS_OK);
    receive(fd, "WATCHDOG=1");
    close(fd);
    unlink(path);
    /* Nobody listening any more: an error, never a crash or a hang. */
    ck_assert_int_eq(kms_notify("STOPPING=1"), KMS_ERR_IO);
}
END_TEST

START_TEST(notify_abstract_socket)
{
    char name[64];
    snprintf(name, sizeof(name), "@custos-test-notify-%d", (int)getpid());
    int fd = bind_dgram(name);
    setenv("NOTIFY_SOCKET", name, 1);
    ck_assert_int_eq(kms_notify("READY=1"), KMS_OK);
    receive(fd, "READY=1");
    close(fd);
}
END_TEST

START_TEST(notify_without_systemd_is_a_no_op)
{
    unsetenv("NOTIFY_SOCKET");
    ck_assert_int_eq(kms_notify("READY=1"), KMS_OK);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    ck_assert_int_eq(kms_notify("READY=1"), KMS_ERR_CONFIG);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longp, 1);
    ck_assert_int_eq(kms_notify("READY=1"), KMS_ERR_CONFIG);
}
END_TEST

START_TEST(watchdog_variables)
{
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    ck_assert_uint_eq(kms_notify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    ck_assert_uint_eq(kms_notify_watchdog_usec(), 30000000);
    char pid[32];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    ck_assert_uint_eq(kms_notify_watchdog_usec(), 30000000);
    /* Meant for another process: not ours to ping. */
    snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    ck_assert_uint_eq(kms_notify_watchdog_usec(), 0);
    setenv("WATCHDOG_PID", "12x", 1);
    ck_assert_uint_eq(kms_notify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    ck_assert_uint_eq(kms_notify_watchdog_usec(), 0);
}
END_TEST

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

START_TEST(log_file_and_reopen)
{
    char path[256], rotated[300];
    snprintf(path, sizeof(path), "%s/log-%d.jsonl", testenv_work_dir(), (int)getpid());
    snprintf(rotated, sizeof(rotated), "%s.1", path);
    unlink(path);
    unlink(rotated);
    kms_log_configure_level(KMS_LOG_INFO);
    ck_assert_int_eq(kms_log_open_file(path), KMS_OK);
    kms_log_info("test", "first \"quoted\" line");
    kms_log_debug("test", "below the level");
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0640);
    ck_assert_int_eq(rename(path, rotated), 0);
    ck_assert_int_eq(kms_log_open_file(path), KMS_OK);
    kms_log_warn("test", "second line");
    const char *old = slurp(rotated);
    ck_assert_ptr_nonnull(strstr(old, "\"level\":\"info\",\"component\":\"test\","
                                      "\"msg\":\"first \\\"quoted\\\" line\"}\n"));
    ck_assert_ptr_null(strstr(old, "below the level"));
    ck_assert_ptr_null(strstr(old, "second line"));
    const char *cur = slurp(path);
    ck_assert_ptr_nonnull(strstr(cur, "\"level\":\"warn\",\"component\":\"test\",\"msg\":\"second line\"}\n"));
    ck_assert_ptr_null(strstr(cur, "first"));
    /* A path that cannot be opened is refused and the current file kept. */
    ck_assert_int_eq(kms_log_open_file("/nonexistent-dir/x.log"), KMS_ERR_CONFIG);
    kms_log_info("test", "third line");
    ck_assert_ptr_nonnull(strstr(slurp(path), "third line"));
    unlink(path);
    unlink(rotated);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_notify");
    TCase *tc = tcase_create("notify");
    tcase_add_test(tc, notify_path_socket);
    tcase_add_test(tc, notify_abstract_socket);
    tcase_add_test(tc, notify_without_systemd_is_a_no_op);
    tcase_add_test(tc, watchdog_variables);
    suite_add_tcase(s, tc);
    tc = tcase_create("log");
    tcase_add_test(tc, log_file_and_reopen);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
