/* test_fileio.c - the library's internal file helpers: whole-file reads
 * with limits, atomic writes, directory creation, JSON kinds. */
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/fileio.h"
#include "testutil.h"

static char dir[] = "/tmp/mhub_test_fileio_XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(dir)); }

static void teardown(void)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[sizeof dir + 260];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            ck_assert_int_eq(remove(p), 0);
    }
    if (d)
        closedir(d);
    rmdir(dir);
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

static Suite *make_suite(void)
{
    Suite *s = suite_create("fileio");
    TCase *tc = tcase_create("fileio");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_write_then_read);
    tcase_add_test(tc, test_read_errors);
    tcase_add_test(tc, test_dir_ensure);
    tcase_add_test(tc, test_json_kind);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
