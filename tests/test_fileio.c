/* test_fileio.c - the library's internal file helpers: whole-file reads
 * with limits, atomic writes (whole and in pieces), directory creation,
 * JSON kinds, UTF-8 checks. */
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/fileio.h"
#include "testutil.h"

static char dir[] = "/tmp/mhub_test_fileio_XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(dir)); }

static void teardown(void)
{
    ck_assert_int_eq(mhub_test_remove_tree(dir), 0);
    strcpy(dir, "/tmp/mhub_test_fileio_XXXXXX");
}

static int entries(void)
{
    int n = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

START_TEST(test_write_then_read)
{
    char path[256];
    snprintf(path, sizeof path, "%s/a.json", dir);
    CK_OK(mhub_file_write_atomic(path, "hello\0world", 11));
    char *data;
    size_t len;
    CK_OK(mhub_file_read_all(path, 1 << 20, "a test file", &data, &len));
    ck_assert_uint_eq(len, 11);
    ck_assert_mem_eq(data, "hello\0world", 11);
    ck_assert_int_eq(data[11], '\0');
    free(data);
    /* a rewrite replaces the whole file and leaves no temporary behind */
    CK_OK(mhub_file_write_atomic(path, "x", 1));
    CK_OK(mhub_file_read_all(path, 1 << 20, "a test file", &data, &len));
    ck_assert_uint_eq(len, 1);
    free(data);
    ck_assert_int_eq(entries(), 1);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0644);
    /* an empty file reads as empty */
    CK_OK(mhub_file_write_atomic(path, "", 0));
    CK_OK(mhub_file_read_all(path, 1 << 20, "a test file", &data, &len));
    ck_assert_uint_eq(len, 0);
    free(data);
}
END_TEST

START_TEST(test_read_errors)
{
    char path[256], *data = (char *)"untouched";
    size_t len = 7;
    snprintf(path, sizeof path, "%s/missing", dir);
    CK_FAILS(MHUB_ERR_IO, mhub_file_read_all(path, 100, "a test file", &data, &len));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "missing"));
    ck_assert_ptr_null(data);
    CK_FAILS(MHUB_ERR_IO, mhub_file_read_all(dir, 100, "a test file", &data, &len));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "is a directory, expected a test file"));
    snprintf(path, sizeof path, "%s/big", dir);
    CK_OK(mhub_file_write_atomic(path, "0123456789", 10));
    CK_FAILS(MHUB_ERR_IO, mhub_file_read_all(path, 9, "a test file", &data, &len));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "at most 9 bytes"));
    CK_FAILS(MHUB_ERR_IO, mhub_file_read_all("/dev/zero", 1 << 20, "a test file", &data, &len));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "larger than 1 MiB"));
}
END_TEST

START_TEST(test_dir_ensure)
{
    char path[256];
    snprintf(path, sizeof path, "%s/sub", dir);
    CK_OK(mhub_dir_ensure(path));
    CK_OK(mhub_dir_ensure(path));
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(rmdir(path), 0);
    snprintf(path, sizeof path, "%s/file", dir);
    CK_OK(mhub_file_write_atomic(path, "x", 1));
    CK_FAILS(MHUB_ERR_IO, mhub_dir_ensure(path));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "not a directory"));
    snprintf(path, sizeof path, "%s/no/such/parent", dir);
    CK_FAILS(MHUB_ERR_IO, mhub_dir_ensure(path));
    /* writing into a missing directory fails and creates nothing */
    snprintf(path, sizeof path, "%s/nodir/f", dir);
    CK_FAILS(MHUB_ERR_IO, mhub_file_write_atomic(path, "x", 1));
}
END_TEST

START_TEST(test_json_kind)
{
    const char *texts[] = {"null", "true", "1.5", "\"s\"", "[1]", "{}"};
    const char *kinds[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
    for (int i = 0; i < 6; i++) {
        cJSON *j = cJSON_Parse(texts[i]);
        ck_assert_str_eq(mhub_json_kind(j), kinds[i]);
        cJSON_Delete(j);
    }
}
END_TEST

START_TEST(test_atomic_pieces)
{
    char path[256];
    snprintf(path, sizeof path, "%s/pieces", dir);
    mhub_atomic_file f;
    CK_OK(mhub_atomic_begin(path, &f));
    CK_OK(mhub_atomic_write(&f, "abc", 3));
    CK_OK(mhub_atomic_write(&f, NULL, 0));
    CK_OK(mhub_atomic_write(&f, "\0de", 3));
    /* nothing at path until the commit, only the temporary */
    ck_assert_int_eq(access(path, F_OK), -1);
    ck_assert_int_eq(entries(), 1);
    CK_OK(mhub_atomic_commit(&f));
    ck_assert_int_eq(f.fd, -1);
    mhub_atomic_abort(&f); /* after a commit: a no-op */
    char *data;
    size_t len;
    CK_OK(mhub_file_read_all(path, 100, "a test file", &data, &len));
    ck_assert_uint_eq(len, 6);
    ck_assert_mem_eq(data, "abc\0de", 6);
    free(data);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0644);
    ck_assert_int_eq(entries(), 1);
    /* an abort leaves the old file and no temporary */
    CK_OK(mhub_atomic_begin(path, &f));
    CK_OK(mhub_atomic_write(&f, "new", 3));
    mhub_atomic_abort(&f);
    mhub_atomic_abort(&f);
    ck_assert_int_eq(entries(), 1);
    CK_OK(mhub_file_read_all(path, 100, "a test file", &data, &len));
    ck_assert_uint_eq(len, 6);
    free(data);
    /* a closed file refuses writes and commits */
    CK_FAILS(MHUB_ERR_STATE, mhub_atomic_write(&f, "x", 1));
    CK_FAILS(MHUB_ERR_STATE, mhub_atomic_commit(&f));
    /* a failed begin names the temporary and leaves a file abort accepts */
    snprintf(path, sizeof path, "%s/nodir/f", dir);
    CK_FAILS(MHUB_ERR_IO, mhub_atomic_begin(path, &f));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "nodir/f.tmp."));
    mhub_atomic_abort(&f);
    ck_assert_int_eq(entries(), 1);
}
END_TEST

START_TEST(test_utf8)
{
    const struct {
        const char *s;
        size_t bad; /* SIZE_MAX: all valid */
    } cases[] = {
        {"plain ascii", SIZE_MAX},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", SIZE_MAX},
        {"\xf4\x8f\xbf\xbf", SIZE_MAX},   /* U+10FFFF */
        {"ab\xff", 2},                     /* never in UTF-8 */
        {"a\xc0\x80", 1},                  /* overlong NUL */
        {"\xe0\x80\xaf", 0},              /* overlong '/' */
        {"x\xed\xa0\x80", 1},              /* a surrogate */
        {"\xf4\x90\x80\x80", 0},          /* past U+10FFFF */
        {"ok\xc3", 2},                     /* cut short */
        {"\xe2\x82x", 0},                  /* bad continuation */
        {"\x80", 0},                       /* a lone continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].s);
        size_t want = cases[i].bad == SIZE_MAX ? n : cases[i].bad;
        ck_assert_msg(mhub_utf8_invalid_at((const unsigned char *)cases[i].s, n) == want,
                      "case %zu", i);
    }
    ck_assert_uint_eq(mhub_utf8_invalid_at((const unsigned char *)"", 0), 0);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("fileio");
    TCase *tc = tcase_create("fileio");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_write_then_read);
    tcase_add_test(tc, test_read_errors);
    tcase_add_test(tc, test_dir_ensure);
    tcase_add_test(tc, test_json_kind);
    tcase_add_test(tc, test_atomic_pieces);
    tcase_add_test(tc, test_utf8);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
