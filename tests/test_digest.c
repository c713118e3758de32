/* test_digest.c - SHA-256 against the FIPS 180-4 / NIST examples and
 * padding-boundary lengths, streaming vs one-shot, and the parameter-list
 * fingerprint checked against a byte string built by hand and against a
 * digest computed in Python with the recipe in digest.h. */
#include <stdint.h>
#include <string.h>

#include "testutil.h"

static mhub_backend *be;

static void setup(void) { CK_OK(mhub_cpu_backend_create(NULL, &be)); }
static void teardown(void)
{
    mhub_backend_free(be);
    be = NULL;
}

static void sha_hex(const void *data, size_t len, char hex[65])
{
    uint8_t d[32];
    CK_OK(mhub_sha256(data, len, d));
    CK_OK(mhub_sha256_hex(d, hex));
}

static void assert_sha(const void *data, size_t len, const char *want)
{
    char hex[65];
    sha_hex(data, len, hex);
    ck_assert_msg(!strcmp(hex, want), "sha256 of %zu bytes: got %s, want %s", len, hex, want);
}

START_TEST(test_fips_examples)
{
    assert_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_sha(NULL, 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_sha(m448, strlen(m448),
               "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
                       "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    assert_sha(m896, strlen(m896),
               "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}
END_TEST

START_TEST(test_million_a)
{
    const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    char *a = malloc(1000000);
    ck_assert_ptr_nonnull(a);
    memset(a, 'a', 1000000);
    assert_sha(a, 1000000, want);

    mhub_sha256_ctx ctx;
    CK_OK(mhub_sha256_init(&ctx));
    for (int i = 0; i < 1000; i++)
        CK_OK(mhub_sha256_update(&ctx, a, 1000));
    uint8_t d[32];
    char hex[65];
    CK_OK(mhub_sha256_final(&ctx, d));
    CK_OK(mhub_sha256_hex(d, hex));
    ck_assert_str_eq(hex, want);
    free(a);
}
END_TEST

/* The padding differs when the length field does / does not fit in the
 * last block: lengths around 55, 56 and 64 bytes. References from
 * Python's hashlib over bytes (7*i + 1) & 0xff. */
START_TEST(test_padding_boundaries)
{
    static const struct {
        size_t len;
        const char *hex;
    } cases[] = {
        {55, "16fa57a0a3423a715d594516339f36189d6b5f93754a9714fef202616a9fabfe"},
        {56, "c37b44e5f1b18554b36966f4f8e08bfbf3164c4b6c10374d12d89850892073c5"},
        {63, "bbba992d2c85af960fb2987a1fd05e0aa82a3db3c740dd8982a9e273b75e36a3"},
        {64, "66bd4633ed6f71c4ecfa4763bf7ba1c8ec7612de9aa6c0578a7b675207c71e0b"},
        {119, "a3ed307b730fa77c07531300c6e4a282330011d4d4caf6bb7b63ae05950f4b66"},
        {120, "8e3b15d9fea7472655aa069620b7f8c2e55ee1499f763200a7515fe826e99d20"},
    };
    uint8_t msg[120];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(7 * i + 1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        assert_sha(msg, cases[c].len, cases[c].hex);
}
END_TEST

START_TEST(test_streaming_equals_one_shot)
{
    enum { LEN = 10007 };
    static uint8_t msg[LEN];
    for (size_t i = 0; i < LEN; i++)
        msg[i] = (uint8_t)((i * 2654435761u) >> 13);
    char whole[65], pieces[65];
    sha_hex(msg, LEN, whole);

    static const size_t sizes[] = {1, 3, 0, 7, 13, 61, 64, 65, 127, 200, 1, 555};
    mhub_sha256_ctx ctx;
    CK_OK(mhub_sha256_init(&ctx));
    size_t done = 0;
    for (int k = 0; done < LEN; k++) {
        size_t n = sizes[k % 12];
        if (n > LEN - done)
            n = LEN - done;
        CK_OK(mhub_sha256_update(&ctx, msg + done, n));
        done += n;
    }
    uint8_t d[32];
    CK_OK(mhub_sha256_final(&ctx, d));
    CK_OK(mhub_sha256_hex(d, pieces));
    ck_assert_str_eq(pieces, whole);

    /* final re-initialised ctx: the next message starts clean */
    CK_OK(mhub_sha256_update(&ctx, "abc", 3));
    CK_OK(mhub_sha256_final(&ctx, d));
    CK_OK(mhub_sha256_hex(d, pieces));
    ck_assert_str_eq(pieces, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

START_TEST(test_sha_bad_input)
{
    mhub_sha256_ctx ctx;
    uint8_t d[32];
    char hex[65];
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_init(NULL));
    CK_OK(mhub_sha256_init(&ctx));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_update(NULL, "a", 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_update(&ctx, NULL, 1));
    CK_OK(mhub_sha256_update(&ctx, NULL, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_final(&ctx, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_final(NULL, d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256(NULL, 5, d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256("a", 1, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_hex(NULL, hex));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_hex(d, NULL));
    /* garbage that was never initialised is refused, not overrun */
    memset(&ctx, 0xff, sizeof ctx);
    CK_FAILS(MHUB_ERR_STATE, mhub_sha256_update(&ctx, "a", 1));
    CK_FAILS(MHUB_ERR_STATE, mhub_sha256_final(&ctx, d));
    /* a message longer than 2^61 - 1 bytes cannot be padded */
    CK_OK(mhub_sha256_init(&ctx));
    ctx.length = (UINT64_MAX >> 3) - 1;
    CK_OK(mhub_sha256_update(&ctx, "a", 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sha256_update(&ctx, "a", 1));
}
END_TEST

/* ---- parameter lists ---- */

static void set_values(mhub_param_list *list, int index, const void *host, size_t bytes)
{
    mhub_tensor *v = &list->items[index].value;
    ck_assert_uint_eq(mhub_tensor_nbytes(v), bytes);
    CK_OK(v->backend->ops->copy(v->backend, v->data, host, bytes, MHUB_COPY_HOST_TO_DEVICE));
}

static const float tiny_w[6] = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f};
static const uint16_t tiny_b[3] = {0x3f80, 0xc000, 0x0000}; /* bf16 1, -2, 0 */
static const uint16_t tiny_s = 0x3c00;                      /* f16 1 */

/* f32 [2, 3], bf16 [3] and an f16 scalar: one of each dtype and rank 0. */
static void build_tiny(mhub_param_list *list, const char *wname, int64_t rows, int64_t cols)
{
    memset(list, 0, sizeof *list);
    int64_t ws[2] = {rows, cols}, bs[1] = {3};
    CK_OK(mhub_param_list_add(list, wname, MHUB_F32, 2, ws, MHUB_INIT_ZEROS, 0, NULL));
    CK_OK(mhub_param_list_add(list, "layer.bias", MHUB_BF16, 1, bs, MHUB_INIT_ZEROS, 0, NULL));
    CK_OK(mhub_param_list_add(list, "scale", MHUB_F16, 0, NULL, MHUB_INIT_ZEROS, 0, NULL));
    CK_OK(mhub_param_list_materialize(list, be, 0));
    set_values(list, 0, tiny_w, sizeof tiny_w);
    set_values(list, 1, tiny_b, sizeof tiny_b);
    set_values(list, 2, &tiny_s, sizeof tiny_s);
}

/* Appends to a growing byte string without going through the library. */
typedef struct bytes {
    uint8_t data[512];
    size_t len;
} bytes;

static void put(bytes *b, const void *p, size_t n)
{
    ck_assert_uint_le(b->len + n, sizeof b->data);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_i64(bytes *b, int64_t v)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)((uint64_t)v >> (8 * i));
    put(b, le, 8);
}

START_TEST(test_digest_matches_hand_built_bytes)
{
    mhub_param_list list;
    build_tiny(&list, "layer.weight", 2, 3);
    char got[65], want[65];
    CK_OK(mhub_param_list_digest(&list, got));

    bytes b = {.len = 0};
    put(&b, "layer.weight\0f32\0", 17);
    put_i64(&b, 2);
    put_i64(&b, 2);
    put_i64(&b, 3);
    put(&b, tiny_w, sizeof tiny_w); /* x86/ARM hosts: already little-endian */
    put(&b, "layer.bias\0bf16\0", 16);
    put_i64(&b, 1);
    put_i64(&b, 3);
    put(&b, tiny_b, sizeof tiny_b);
    put(&b, "scale\0f16\0", 10);
    put_i64(&b, 0);
    put(&b, &tiny_s, sizeof tiny_s);
    sha_hex(b.data, b.len, want);
    ck_assert_str_eq(got, want);

    /* computed in Python with hashlib + numpy following digest.h */
    ck_assert_str_eq(got, "0a9ddc2507888064c46b1bbe026dfec5394e3cc8c1ae64f79a00daf9709bb8ea");
    mhub_param_list_free(&list);
}
END_TEST

START_TEST(test_digest_equal_and_sensitive)
{
    mhub_param_list a, b;
    char da[65], db[65];
    build_tiny(&a, "layer.weight", 2, 3);
    build_tiny(&b, "layer.weight", 2, 3);
    CK_OK(mhub_param_list_digest(&a, da));
    CK_OK(mhub_param_list_digest(&b, db));
    ck_assert_str_eq(da, db);
    CK_OK(mhub_param_list_digest(&a, db)); /* repeatable */
    ck_assert_str_eq(da, db);

    /* one bit of one value: the lowest mantissa bit of the bf16 zero */
    uint16_t flipped[3] = {tiny_b[0], tiny_b[1], (uint16_t)(tiny_b[2] ^ 1)};
    set_values(&b, 1, flipped, sizeof flipped);
    CK_OK(mhub_param_list_digest(&b, db));
    ck_assert_str_ne(da, db);
    mhub_param_list_free(&b);

    /* same values under another name */
    build_tiny(&b, "layer.weigh7", 2, 3);
    CK_OK(mhub_param_list_digest(&b, db));
    ck_assert_str_ne(da, db);
    mhub_param_list_free(&b);

    /* same bytes, transposed shape */
    build_tiny(&b, "layer.weight", 3, 2);
    CK_OK(mhub_param_list_digest(&b, db));
    ck_assert_str_ne(da, db);
    mhub_param_list_free(&b);

    /* list order is part of the fingerprint: the same two parameters
     * added the other way round */
    mhub_param_list c, d;
    memset(&c, 0, sizeof c);
    memset(&d, 0, sizeof d);
    int64_t s1[1] = {1};
    CK_OK(mhub_param_list_add(&c, "x", MHUB_F32, 1, s1, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_add(&c, "y", MHUB_F32, 1, s1, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_add(&d, "y", MHUB_F32, 1, s1, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_add(&d, "x", MHUB_F32, 1, s1, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_materialize(&c, be, 1));
    CK_OK(mhub_param_list_materialize(&d, be, 1));
    CK_OK(mhub_param_list_digest(&c, da));
    CK_OK(mhub_param_list_digest(&d, db));
    ck_assert_str_ne(da, db);
    mhub_param_list_free(&c);
    mhub_param_list_free(&d);
    mhub_param_list_free(&a);
}
END_TEST

/* A parameter larger than the 1 MiB read-back chunk, plus an empty one:
 * the digest must equal SHA-256 of the whole byte string. */
START_TEST(test_digest_chunked_and_empty)
{
    enum { N = 600001 }; /* 2.4 MB: two full chunks and a ragged tail */
    mhub_param_list list;
    memset(&list, 0, sizeof list);
    int64_t big[1] = {N}, none[2] = {0, 5};
    CK_OK(mhub_param_list_add(&list, "big", MHUB_F32, 1, big, MHUB_INIT_NORMAL, 0.02f, NULL));
    CK_OK(mhub_param_list_add(&list, "empty", MHUB_F32, 2, none, MHUB_INIT_ZEROS, 0, NULL));
    CK_OK(mhub_param_list_materialize(&list, be, 42));
    float *host = malloc((size_t)N * sizeof *host);
    ck_assert_ptr_nonnull(host);
    CK_OK(be->ops->copy(be, host, list.items[0].value.data, (size_t)N * sizeof *host,
                        MHUB_COPY_DEVICE_TO_HOST));

    mhub_sha256_ctx ctx;
    bytes b = {.len = 0};
    put(&b, "big\0f32\0", 8);
    put_i64(&b, 1);
    put_i64(&b, N);
    CK_OK(mhub_sha256_init(&ctx));
    CK_OK(mhub_sha256_update(&ctx, b.data, b.len));
    CK_OK(mhub_sha256_update(&ctx, host, (size_t)N * sizeof *host));
    b.len = 0;
    put(&b, "empty\0f32\0", 10);
    put_i64(&b, 2);
    put_i64(&b, 0);
    put_i64(&b, 5);
    CK_OK(mhub_sha256_update(&ctx, b.data, b.len));
    uint8_t d[32];
    char want[65], got[65];
    CK_OK(mhub_sha256_final(&ctx, d));
    CK_OK(mhub_sha256_hex(d, want));
    CK_OK(mhub_param_list_digest(&list, got));
    ck_assert_str_eq(got, want);
    free(host);
    mhub_param_list_free(&list);

    /* no parameters: the digest of the empty string */
    CK_OK(mhub_param_list_digest(&list, got));
    ck_assert_str_eq(got, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}
END_TEST

START_TEST(test_digest_bad_input)
{
    mhub_param_list list;
    char hex[65];
    build_tiny(&list, "layer.weight", 2, 3);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_param_list_digest(NULL, hex));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_param_list_digest(&list, NULL));

    int64_t s[1] = {4};
    CK_OK(mhub_param_list_add(&list, "head.meta_weight", MHUB_F32, 1, s, MHUB_INIT_ZEROS, 0,
                              NULL));
    CK_FAILS(MHUB_ERR_STATE, mhub_param_list_digest(&list, hex));
    ck_assert_msg(strstr(mhub_last_error(), "head.meta_weight") != NULL,
                  "message does not name the parameter: %s", mhub_last_error());
    mhub_param_list_free(&list);

    mhub_param_list broken = {.items = NULL, .count = 2, .cap = 0};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_param_list_digest(&broken, hex));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("digest");
    TCase *sha = tcase_create("sha256");
    tcase_add_test(sha, test_fips_examples);
    tcase_add_test(sha, test_million_a);
    tcase_add_test(sha, test_padding_boundaries);
    tcase_add_test(sha, test_streaming_equals_one_shot);
    tcase_add_test(sha, test_sha_bad_input);
    suite_add_tcase(s, sha);
    TCase *params = tcase_create("param_list");
    tcase_add_checked_fixture(params, setup, teardown);
    tcase_add_test(params, test_digest_matches_hand_built_bytes);
    tcase_add_test(params, test_digest_equal_and_sensitive);
    tcase_add_test(params, test_digest_chunked_and_empty);
    tcase_add_test(params, test_digest_bad_input);
    suite_add_tcase(s, params);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
