/* checkpoint.c - atomic, reshardable, checksummed training checkpoints
 * (see checkpoint.h). Tensors are stored whole, by name, parameter i in
 * rank i % dp's shard file, so loading at another dp size only changes
 * which file a tensor is read from.
 *
 * No hangs: a rank that fails must still make every collective call the
 * others make, or skip it together with them. So each call runs in
 * phases: the local work that can fail (argument checks, allocations,
 * file access) comes first and ends in mhub_dp_agree() (dp_common.h); only then does a phase
 * of collectives start, and it allocates nothing of its own. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mhub/checkpoint.h"
#include "mhub/digest.h"
#include "mhub/safetensors.h"
#include "src/dp_common.h"
#include "src/fileio.h"

#define MANIFEST "manifest.json"
#define LATEST "latest"
#define FORMAT "mhub-checkpoint"

/* ---- small file helpers ------------------------------------------------------ */

/* Paths are bounded up front (check_path), so "dir/name" always fits;
 * the length check only keeps a would-be truncation from going unseen. */
static bool join(char *out, size_t size, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + b + 2 > size) {
        out[0] = '\0';
        return false;
    }
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, name, b + 1);
    return true;
}

#define MAX_DIR 2048

static mhub_status check_path(const char *dir)
{
    return strlen(dir) < MAX_DIR ? MHUB_OK
                                 : mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint: the path "
                                              "%.64s... is over %d bytes", dir, MAX_DIR);
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Remove a directory of plain files (a checkpoint: it has no subfolders). */
static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char path[4096];
    for (struct dirent *it; (it = readdir(d));) {
        if (!strcmp(it->d_name, ".") || !strcmp(it->d_name, ".."))
            continue;
        join(path, sizeof path, dir, it->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* fsync a directory so a rename inside it survives a crash. */
static mhub_status sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return mhub_error(MHUB_ERR_IO, "checkpoint: cannot open %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? MHUB_OK
                   : mhub_error(MHUB_ERR_IO, "checkpoint: cannot sync %s: %s", dir,
                                strerror(errno));
}

static void shard_name(char *out, size_t size, int rank, int ranks)
{
    snprintf(out, size, "shard-%05d-of-%05d.safetensors", rank, ranks);
}

/* "<param>" or "<param>.<state>": the tensor names in a shard. */
static void tensor_name(char *out, size_t size, const char *param, const char *state)
{
    if (state)
        snprintf(out, size, "%s.%s", param, state);
    else
        snprintf(out, size, "%s", param);
}

/* SHA-256 of a whole file, as hex. Read in 1 MiB pieces, so memory does
 * not grow with the shard. */
static mhub_status hash_file(const char *path, char hex[MHUB_SHA256_HEX_CHARS])
{
    enum { PIECE = 1 << 20 };
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return mhub_error(MHUB_ERR_IO, "checkpoint: cannot open %s: %s", path, strerror(errno));
    unsigned char *buf = malloc(PIECE);
    mhub_sha256_ctx ctx;
    mhub_status s = buf ? mhub_sha256_init(&ctx)
                        : mhub_error(MHUB_ERR_NO_MEMORY, "checkpoint: buffer to hash %s", path);
    while (s == MHUB_OK) {
        ssize_t n = read(fd, buf, PIECE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            s = mhub_error(MHUB_ERR_IO, "checkpoint: cannot read %s: %s", path, strerror(errno));
        if (n <= 0)
            break;
        s = mhub_sha256_update(&ctx, buf, (size_t)n);
    }
    close(fd);
    free(buf);
    uint8_t digest[MHUB_SHA256_BYTES];
    if (s == MHUB_OK)
        s = mhub_sha256_final(&ctx, digest);
    return s == MHUB_OK ? mhub_sha256_hex(digest, hex) : s;
}

static bool is_sha256_hex(const char *text)
{
    size_t n = 0;
    for (; text[n]; n++)
        if (!((text[n] >= '0' && text[n] <= '9') || (text[n] >= 'a' && text[n] <= 'f')))
            return false;
    return n == MHUB_SHA256_HEX_CHARS - 1;
}

/* The run settings a caller passes: unique, non-empty keys with values. */
static mhub_status check_settings(const mhub_checkpoint_setting *run, int count)
{
    if (count < 0 || (count > 0 && !run))
        return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint: %d run settings at %p", count,
                          (const void *)run);
    for (int i = 0; i < count; i++) {
        if (!run[i].key || !run[i].key[0] || !run[i].value)
            return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint: run setting %d has no key or "
                              "no value", i);
        for (int j = 0; j < i; j++)
            if (!strcmp(run[i].key, run[j].key))
                return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint: run setting \"%s\" is "
                                  "given twice", run[i].key);
    }
    return MHUB_OK;
}

/* ---- saving ------------------------------------------------------------------ */

/* The tensors of one shard in host memory, allocated before the gather
 * and filled by it in the order they were added. */
typedef struct shard_entries {
    mhub_safetensors_entry *items;
    char **names;
    float **data;
    int count, cap;
} shard_entries;

static void free_entries(shard_entries *s)
{
    for (int i = 0; i < s->count; i++) {
        free(s->names[i]);
        free(s->data[i]);
    }
    free(s->items);
    free(s->names);
    free(s->data);
    memset(s, 0, sizeof *s);
}

static mhub_status grow_entries(shard_entries *s)
{
    int cap = s->cap ? 2 * s->cap : 16;
    mhub_safetensors_entry *items = realloc(s->items, (size_t)cap * sizeof *items);
    if (items)
        s->items = items;
    char **names = realloc(s->names, (size_t)cap * sizeof *names);
    if (names)
        s->names = names;
    float **data = realloc(s->data, (size_t)cap * sizeof *data);
    if (data)
        s->data = data;
    if (!items || !names || !data)
        return mhub_error(MHUB_ERR_NO_MEMORY, "checkpoint: tensor table");
    s->cap = cap;
    return MHUB_OK;
}

/* Append a tensor named like parameter p (plus state), with its buffer. */
static mhub_status add_entry(shard_entries *s, const mhub_param *p, const char *state)
{
    if (s->count == s->cap)
        MHUB_TRY(grow_entries(s));
    char name[1024];
    tensor_name(name, sizeof name, p->name, state);
    char *copy = strdup(name);
    float *buf = malloc((size_t)(p->value.numel ? p->value.numel : 1) * sizeof(float));
    if (!copy || !buf) {
        free(copy);
        free(buf);
        return mhub_error(MHUB_ERR_NO_MEMORY, "checkpoint: tensor %s", name);
    }
    s->names[s->count] = copy;
    s->data[s->count] = buf;
    s->items[s->count] = (mhub_safetensors_entry){.name = copy, .dtype = MHUB_F32,
                                                  .ndim = p->value.ndim,
                                                  .shape = p->value.shape, .data = buf};
    s->count++;
    return MHUB_OK;
}

/* A shard's SHA-256 travels between ranks as its 64 hex digits in 16
 * floats: ASCII digits and 'a'-'f' make normal floats (never NaN, Inf or
 * subnormal), and a gather copies bits anyway. */
#define DIGEST_FLOATS ((MHUB_SHA256_HEX_CHARS - 1) / (int)sizeof(float))

/* Everything a save allocates, made before its first collective. */
typedef struct save_plan {
    shard_entries mine;   /* the tensors this rank writes */
    float *scratch;       /* where a tensor another rank writes is gathered */
    float *digests;       /* DIGEST_FLOATS per rank: every shard's digest */
} save_plan;

static void plan_free(save_plan *plan)
{
    free_entries(&plan->mine);
    free(plan->scratch);
    free(plan->digests);
    memset(plan, 0, sizeof *plan);
}

/* Local: this rank's tensors (parameter i and its state when
 * i % dp == rank), one scratch as large as the largest of the others,
 * and room for the digests. */
static mhub_status plan_save(mhub_dp_engine *e, const mhub_comm *dp, save_plan *plan)
{
    const mhub_param_list *pl = mhub_dp_engine_params(e);
    int64_t largest = 1;
    for (int i = 0; i < pl->count; i++) {
        const mhub_param *p = &pl->items[i];
        if (i % dp->size != dp->rank) {
            largest = p->value.numel > largest ? p->value.numel : largest;
            continue;
        }
        for (int w = -1; w < mhub_dp_engine_state_count(e, i); w++)
            MHUB_TRY(add_entry(&plan->mine, p,
                               w < 0 ? NULL : mhub_dp_engine_state_name(e, i, w)));
    }
    plan->scratch = malloc((size_t)largest * sizeof(float));
    plan->digests = malloc((size_t)dp->size * DIGEST_FLOATS * sizeof(float));
    if (!plan->scratch || !plan->digests)
        return mhub_error(MHUB_ERR_NO_MEMORY, "checkpoint: gather buffers (%lld floats)",
                          (long long)largest);
    return MHUB_OK;
}

/* Collective: every rank calls the getters (collective for sharded
 * engines) for every tensor in the same order, into the buffers planned;
 * only the owner keeps what it gets. Nothing here allocates or touches a
 * file: the getters are all that can fail, and the sharded engines'
 * getters agree on their own local failures before they gather
 * (mhub_dp_gather_pieces), so a rank failing there fails them all. */
static mhub_status gather_tensors(mhub_dp_engine *e, const mhub_comm *dp, save_plan *plan)
{
    const mhub_param_list *pl = mhub_dp_engine_params(e);
    int next = 0;
    for (int i = 0; i < pl->count; i++) {
        bool mine = i % dp->size == dp->rank;
        for (int w = -1; w < mhub_dp_engine_state_count(e, i); w++) {
            float *buf = mine ? plan->mine.data[next++] : plan->scratch;
            MHUB_TRY(w < 0 ? mhub_dp_engine_get_param(e, i, buf)
                           : mhub_dp_engine_get_state(e, i, w, buf));
        }
    }
    return MHUB_OK;
}

/* Local: the shard file, written through a synced temporary and renamed
 * (complete or absent), and its SHA-256 as stored. Hashing the file read
 * back rather than the bytes on their way out keeps one serializer (the
 * safetensors writer's) and covers what actually reached the file; the
 * read comes from the page cache. */
static mhub_status write_shard(const char *tmp, const mhub_comm *dp, const save_plan *plan,
                               char hex[MHUB_SHA256_HEX_CHARS])
{
    char name[128], path[4096];
    shard_name(name, sizeof name, dp->rank, dp->size);
    join(path, sizeof path, tmp, name);
    MHUB_TRY(mhub_safetensors_write(path, plan->mine.items, plan->mine.count, NULL));
    return hash_file(path, hex);
}

/* Collective: every rank's shard digest into plan->digests. */
static mhub_status gather_digests(mhub_comm *dp, const char hex[MHUB_SHA256_HEX_CHARS],
                                  save_plan *plan)
{
    float mine[DIGEST_FLOATS];
    memcpy(mine, hex, sizeof mine);
    return mhub_comm_allgather(dp, mine, plan->digests, DIGEST_FLOATS, MHUB_F32);
}

/* The "shards" array: each rank's file name and digest. */
static cJSON *shard_list(const mhub_comm *dp, const float *digests)
{
    cJSON *shards = cJSON_CreateArray();
    bool ok = shards != NULL;
    for (int r = 0; ok && r < dp->size; r++) {
        char name[128], hex[MHUB_SHA256_HEX_CHARS];
        shard_name(name, sizeof name, r, dp->size);
        memcpy(hex, digests + (size_t)r * DIGEST_FLOATS, sizeof hex - 1);
        hex[sizeof hex - 1] = '\0';
        cJSON *item = cJSON_CreateObject();
        ok = item && cJSON_AddStringToObject(item, "file", name) &&
             cJSON_AddStringToObject(item, "sha256", hex) && cJSON_AddItemToArray(shards, item);
        if (!ok)
            cJSON_Delete(item);   /* not in the array */
    }
    if (!ok) {
        cJSON_Delete(shards);
        return NULL;
    }
    return shards;
}

static cJSON *run_object(const mhub_checkpoint_setting *run, int run_count)
{
    cJSON *obj = cJSON_CreateObject();
    for (int i = 0; obj && i < run_count; i++)
        if (!cJSON_AddStringToObject(obj, run[i].key, run[i].value)) {
            cJSON_Delete(obj);
            return NULL;
        }
    return obj;
}

static mhub_status write_manifest(const char *tmp, mhub_dp_engine *e, const mhub_comm *dp,
                                  int64_t step, int64_t seed, const float *digests,
                                  const mhub_checkpoint_setting *run, int run_count)
{
    cJSON *m = cJSON_CreateObject();
    bool ok = m && cJSON_AddStringToObject(m, "format", FORMAT) &&
              cJSON_AddNumberToObject(m, "version", MHUB_CHECKPOINT_VERSION) &&
              cJSON_AddNumberToObject(m, "step", (double)step) &&
              cJSON_AddNumberToObject(m, "optim_steps", (double)mhub_dp_engine_optim_steps(e)) &&
              cJSON_AddNumberToObject(m, "seed", (double)seed) &&
              cJSON_AddNumberToObject(m, "dp_size", dp->size) &&
              cJSON_AddStringToObject(m, "engine",
                                      mhub_dp_engine_name(mhub_dp_engine_kind_of(e))) &&
              cJSON_AddNumberToObject(m, "params", mhub_dp_engine_params(e)->count);
    cJSON *shards = ok ? shard_list(dp, digests) : NULL;
    ok = shards && cJSON_AddItemToObject(m, "shards", shards);
    if (!ok && shards)
        cJSON_Delete(shards);
    cJSON *settings = ok ? run_object(run, run_count) : NULL;
    ok = settings && cJSON_AddItemToObject(m, "run", settings);
    if (!ok && settings)
        cJSON_Delete(settings);
    char *text = ok ? cJSON_Print(m) : NULL;
    cJSON_Delete(m);
    if (!text)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "checkpoint manifest");
    char path[4096];
    join(path, sizeof path, tmp, MANIFEST);
    mhub_status s = mhub_file_write_atomic(path, text, strlen(text));
    free(text);
    return s;
}

/* Rank 0: move the finished temporary to step-<N> and point latest at it.
 * An older step-<N> (a rerun) is moved aside first and removed after, so
 * some complete copy exists at every moment. */
static mhub_status publish(const char *dir, const char *tmp, int64_t step)
{
    char name[64], final[4096], old[4096], latest[4096];
    snprintf(name, sizeof name, "step-%lld", (long long)step);
    join(final, sizeof final, dir, name);
    snprintf(old, sizeof old, "%s/.old-%s", dir, name);
    MHUB_TRY(sync_dir(tmp));
    bool had_old = is_dir(final);
    if (had_old && rename(final, old) != 0)
        return mhub_error(MHUB_ERR_IO, "checkpoint: cannot move %s aside: %s", final,
                          strerror(errno));
    if (rename(tmp, final) != 0) {
        mhub_status s = mhub_error(MHUB_ERR_IO, "checkpoint: cannot rename %s to %s: %s", tmp,
                                   final, strerror(errno));
        if (had_old)
            rename(old, final);
        return s;
    }
    if (had_old)
        remove_flat_dir(old);
    MHUB_TRY(sync_dir(dir));
    char text[80];
    snprintf(text, sizeof text, "%s\n", name);
    join(latest, sizeof latest, dir, LATEST);
    return mhub_file_write_atomic(latest, text, strlen(text));
}

/* Rank 0: DIR and a fresh DIR/.tmp-step-N (a leftover from a crash is
 * cleared). */
static mhub_status make_tmp(const char *dir, const char *tmp)
{
    MHUB_TRY(mhub_dir_ensure(dir));
    if (is_dir(tmp))
        remove_flat_dir(tmp);
    return mhub_dir_ensure(tmp);
}

static mhub_status check_save_args(const char *dir, const mhub_dp_engine *e,
                                   const mhub_provider_config *cfg, int64_t step,
                                   const mhub_checkpoint_setting *run, int run_count)
{
    if (!dir || !e || !cfg || step < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "dir, engine or config is NULL, or step < 0");
    MHUB_TRY(check_path(dir));
    return check_settings(run, run_count);
}

/* Phase 1 (local, agreed): arguments, rank 0's temporary directory,
 * every buffer. Phase 2: gather the tensors, write and hash the shard
 * (agreed). Phase 3: gather the digests. Phase 4 (rank 0, agreed): the
 * config, the manifest, publishing. */
mhub_status mhub_checkpoint_save(const char *dir, mhub_dp_engine *e, mhub_comm *dp,
                                 const mhub_provider_config *cfg, int64_t step, int64_t seed,
                                 const mhub_checkpoint_setting *run, int run_count)
{
    if (!dp)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "dp is NULL");
    char tmp[4096] = "", hex[MHUB_SHA256_HEX_CHARS];
    save_plan plan = {0};
    mhub_status mine = check_save_args(dir, e, cfg, step, run, run_count);
    if (mine == MHUB_OK)
        snprintf(tmp, sizeof tmp, "%s/.tmp-step-%lld", dir, (long long)step);
    if (mine == MHUB_OK && dp->rank == 0)
        mine = make_tmp(dir, tmp);
    if (mine == MHUB_OK)
        mine = plan_save(e, dp, &plan);
    mhub_status s = mhub_dp_agree(dp, mine);
    if (s == MHUB_OK) {
        mine = gather_tensors(e, dp, &plan);
        if (mine == MHUB_OK)
            mine = write_shard(tmp, dp, &plan, hex);
        s = mhub_dp_agree(dp, mine);
    }
    if (s == MHUB_OK)
        s = mhub_dp_agree(dp, gather_digests(dp, hex, &plan));
    if (s == MHUB_OK) {
        mine = MHUB_OK;
        /* the manifest last: a directory without one is never published */
        if (dp->rank == 0)
            mine = mhub_config_save_pretrained(cfg, tmp, NULL, NULL);
        if (dp->rank == 0 && mine == MHUB_OK)
            mine = write_manifest(tmp, e, dp, step, seed, plan.digests, run, run_count);
        if (dp->rank == 0 && mine == MHUB_OK)
            mine = publish(dir, tmp, step);
        s = mhub_dp_agree(dp, mine);
    }
    plan_free(&plan);
    /* nothing half-written stays behind */
    if (s != MHUB_OK && dp->rank == 0 && tmp[0])
        remove_flat_dir(tmp);
    return s;
}

/* ---- loading ----------------------------------------------------------------- */

typedef struct manifest {
    int version, dp_size, params;
    int64_t step, optim_steps, seed;
    char engine[32];
    char **shards;                        /* dp_size file names */
    char (*sha256)[MHUB_SHA256_HEX_CHARS]; /* and their digests */
    cJSON *run;                           /* the saved settings: an object of strings */
} manifest;

static void manifest_free(manifest *m)
{
    for (int i = 0; m->shards && i < m->dp_size; i++)
        free(m->shards[i]);
    free(m->shards);
    free(m->sha256);
    cJSON_Delete(m->run);
    memset(m, 0, sizeof *m);
}

/* A checkpoint directory, or DIR whose "latest" names one. */
static mhub_status resolve(const char *path, char *out, size_t size)
{
    char probe[4096];
    join(probe, sizeof probe, path, MANIFEST);
    if (access(probe, F_OK) == 0) {
        snprintf(out, size, "%s", path);
        return MHUB_OK;
    }
    join(probe, sizeof probe, path, LATEST);
    char *text = NULL;
    size_t len = 0;
    if (mhub_file_read_all(probe, 4096, "a checkpoint's latest file", &text, &len) != MHUB_OK)
        return mhub_error(MHUB_ERR_IO, "checkpoint %s: neither %s nor %s/%s is there", path,
                          MANIFEST, path, LATEST);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
        text[--len] = '\0';
    mhub_status s = MHUB_OK;
    if (len == 0 || strchr(text, '/') || strchr(text, '\n') || text[0] == '.')
        s = mhub_error(MHUB_ERR_PARSE, "checkpoint %s: it does not name a step directory",
                       probe);
    else
        snprintf(out, size, "%s/%s", path, text);
    free(text);
    return s;
}

static mhub_status get_num(const cJSON *root, const char *file, const char *key, double lo,
                           double hi, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: \"%s\" must be an integer in "
                          "[%g, %g]", file, key, lo, hi);
    *out = v->valuedouble;
    return MHUB_OK;
}

/* "shards": dp_size objects {"file": a name in the directory, "sha256":
 * 64 lowercase hex digits}. */
static mhub_status read_shards(const cJSON *root, const char *file, manifest *m)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "shards");
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != m->dp_size)
        return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: \"shards\" must list dp_size = %d "
                          "files", file, m->dp_size);
    m->shards = calloc((size_t)m->dp_size, sizeof *m->shards);
    m->sha256 = calloc((size_t)m->dp_size, sizeof *m->sha256);
    if (!m->shards || !m->sha256)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "shard names");
    int r = 0;
    for (const cJSON *it = arr->child; it; it = it->next, r++) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "file");
        const cJSON *sum = cJSON_GetObjectItemCaseSensitive(it, "sha256");
        if (!cJSON_IsString(name) || strchr(name->valuestring, '/') ||
            name->valuestring[0] == '.')
            return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: shard %d has no \"file\" name",
                              file, r);
        if (!cJSON_IsString(sum) || !is_sha256_hex(sum->valuestring))
            return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: shard %d (%s) has no \"sha256\" "
                              "of 64 lowercase hex digits", file, r, name->valuestring);
        if (!(m->shards[r] = strdup(name->valuestring)))
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "shard names");
        memcpy(m->sha256[r], sum->valuestring, MHUB_SHA256_HEX_CHARS);
    }
    return MHUB_OK;
}

/* "run": an object of strings, kept (detached) for check_run. */
static mhub_status read_run(cJSON *root, const char *file, manifest *m)
{
    cJSON *run = cJSON_GetObjectItemCaseSensitive(root, "run");
    if (!cJSON_IsObject(run))
        return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: \"run\" (the run's settings) must "
                          "be an object", file);
    for (const cJSON *it = run->child; it; it = it->next)
        if (!cJSON_IsString(it))
            return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: run setting \"%s\" must be a "
                              "string, not %s", file, it->string, mhub_json_kind(it));
    m->run = cJSON_DetachItemViaPointer(root, run);
    return MHUB_OK;
}

static mhub_status parse_manifest(cJSON *root, const char *file, manifest *m)
{
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, FORMAT) != 0)
        return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: not an mhub checkpoint manifest "
                          "(\"format\" is not \"%s\")", file, FORMAT);
    double v = 0;
    MHUB_TRY(get_num(root, file, "version", 0, 1e9, &v));
    if (v == 1)
        return mhub_error(MHUB_ERR_UNSUPPORTED, "checkpoint %s: format version 1 is not "
                          "supported: it has no shard checksums to verify and no run settings "
                          "to check a resume against (this mhub reads version %d)", file,
                          MHUB_CHECKPOINT_VERSION);
    if (v != MHUB_CHECKPOINT_VERSION)
        return mhub_error(MHUB_ERR_UNSUPPORTED, "checkpoint %s: format version %g is not "
                          "supported (this mhub reads version %d)", file, v,
                          MHUB_CHECKPOINT_VERSION);
    m->version = (int)v;
    MHUB_TRY(get_num(root, file, "dp_size", 1, 1 << 20, &v));
    m->dp_size = (int)v;
    MHUB_TRY(get_num(root, file, "params", 0, 1 << 30, &v));
    m->params = (int)v;
    MHUB_TRY(get_num(root, file, "step", 0, 9007199254740992.0, &v));
    m->step = (int64_t)v;
    MHUB_TRY(get_num(root, file, "optim_steps", 0, 9007199254740992.0, &v));
    m->optim_steps = (int64_t)v;
    MHUB_TRY(get_num(root, file, "seed", 0, 9007199254740992.0, &v));
    m->seed = (int64_t)v;
    const cJSON *engine = cJSON_GetObjectItemCaseSensitive(root, "engine");
    if (cJSON_IsString(engine))
        snprintf(m->engine, sizeof m->engine, "%s", engine->valuestring);
    MHUB_TRY(read_shards(root, file, m));
    return read_run(root, file, m);
}

static mhub_status read_manifest(const char *ckpt, manifest *m)
{
    char path[4096];
    join(path, sizeof path, ckpt, MANIFEST);
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_file_read_all(path, 1 << 20, "a checkpoint manifest", &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: not valid JSON (corrupted?)", path);
    mhub_status s = parse_manifest(root, path, m);
    cJSON_Delete(root);
    return s;
}

/* The first top-level key whose value differs, named with both values. */
static mhub_status name_difference(const char *file, const cJSON *saved, const cJSON *here)
{
    for (const cJSON *it = here->child; it; it = it->next) {
        const cJSON *other = cJSON_GetObjectItemCaseSensitive(saved, it->string);
        if (other && cJSON_Compare(it, other, true))
            continue;
        char *a = other ? cJSON_PrintUnformatted(other) : NULL;
        char *b = cJSON_PrintUnformatted(it);
        mhub_status s = mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint %s was written for "
                                   "another model: \"%s\" is %s there and %s here", file,
                                   it->string, a ? a : "absent", b ? b : "?");
        free(a);
        free(b);
        return s;
    }
    return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint %s was written for another model",
                      file);
}

static mhub_status check_config(const char *ckpt, const mhub_provider_config *cfg)
{
    char path[4096];
    join(path, sizeof path, ckpt, MHUB_CONFIG_NAME);
    mhub_provider_config *saved = NULL;
    MHUB_TRY(mhub_config_from_pretrained(path, MHUB_CONFIG_STRICT, NULL, &saved));
    if (saved->type == cfg->type && mhub_config_equal(saved, cfg)) {
        mhub_config_free(saved);
        return MHUB_OK;
    }
    char *a = NULL, *b = NULL;
    mhub_status s = mhub_config_to_json(saved, false, &a);
    if (s == MHUB_OK)
        s = mhub_config_to_json(cfg, false, &b);
    mhub_config_free(saved);
    cJSON *ja = s == MHUB_OK ? cJSON_Parse(a) : NULL, *jb = s == MHUB_OK ? cJSON_Parse(b) : NULL;
    if (s == MHUB_OK)
        s = ja && jb ? name_difference(path, ja, jb)
                     : mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint %s was written for "
                                  "another model", path);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    free(a);
    free(b);
    return s;
}

/* Append "key saved -> now" to the list of changed settings; a list too
 * long for `size` ends in "...". */
static void note_change(char *out, size_t size, const char *key, const char *saved,
                        const char *now)
{
    size_t used = strlen(out);
    int n = snprintf(out + used, size - used, "%s%s %s -> %s", used ? "; " : "", key,
                     saved ? saved : "(not recorded)", now);
    if (n < 0 || (size_t)n >= size - used)
        snprintf(out + (size > 4 ? size - 4 : 0), size > 4 ? 4 : size, "...");
}

/* The caller's settings against the saved ones: an exact setting that
 * differs is an error naming both values; the others are listed in
 * `changed`. Settings the caller does not name are not looked at. */
static mhub_status check_run(const char *ckpt, const manifest *m,
                             const mhub_checkpoint_setting *run, int run_count, char *changed,
                             size_t size)
{
    changed[0] = '\0';
    for (int i = 0; i < run_count; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(m->run, run[i].key);
        const char *saved = it ? it->valuestring : NULL;
        if (saved && !strcmp(saved, run[i].value))
            continue;
        if (run[i].exact)
            return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint %s/%s: %s was %s in the saved "
                              "run and is %s here; resuming with another value would not "
                              "continue that run exactly", ckpt, MANIFEST, run[i].key,
                              saved ? saved : "not recorded", run[i].value);
        note_change(changed, size, run[i].key, saved, run[i].value);
    }
    return MHUB_OK;
}

/* The shard files against the manifest's digests, before any tensor is
 * used. Every rank reads every shard, but each is hashed by one rank only
 * (shard r by rank r mod `ranks`): the outcome is agreed before the copy,
 * so a mismatch still fails every rank, and hashing is not done `ranks`
 * times over. */
static mhub_status verify_shards(const char *ckpt, const manifest *m, int rank, int ranks)
{
    char path[4096], hex[MHUB_SHA256_HEX_CHARS];
    for (int r = rank; r < m->dp_size; r += ranks) {
        join(path, sizeof path, ckpt, m->shards[r]);
        MHUB_TRY(hash_file(path, hex));
        if (strcmp(hex, m->sha256[r]) != 0)
            return mhub_error(MHUB_ERR_IO, "checkpoint %s fails its sha256 checksum: the "
                              "manifest has %.12s..., the file hashes to %.12s... (corrupted "
                              "or changed since it was saved)", path, m->sha256[r], hex);
    }
    return MHUB_OK;
}

/* Every shard file, opened (and so validated). */
typedef struct shard_set {
    mhub_safetensors **files;
    int count;
} shard_set;

static void shards_close(shard_set *set)
{
    for (int i = 0; set->files && i < set->count; i++)
        mhub_safetensors_close(set->files[i]);
    free(set->files);
    memset(set, 0, sizeof *set);
}

static mhub_status shards_open(const char *ckpt, const manifest *m, shard_set *set)
{
    if (!(set->files = calloc((size_t)m->dp_size, sizeof *set->files)))
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "shard handles");
    set->count = m->dp_size;
    char path[4096];
    for (int r = 0; r < m->dp_size; r++) {
        join(path, sizeof path, ckpt, m->shards[r]);
        MHUB_TRY(mhub_safetensors_open(path, &set->files[r]));
    }
    return MHUB_OK;
}

/* Tensor `name` must be in `st` with parameter p's shape. */
static mhub_status check_tensor(const mhub_safetensors *st, const mhub_param *p,
                                const char *name)
{
    int idx = mhub_safetensors_find(st, name);
    if (idx < 0)
        return mhub_error(MHUB_ERR_PARSE, "checkpoint %s: tensor %s is missing (another "
                          "model or optimizer?)", mhub_safetensors_path(st), name);
    mhub_safetensors_tensor t;
    MHUB_TRY(mhub_safetensors_info(st, idx, &t));
    bool same = t.ndim == p->value.ndim && t.has_mhub_dtype && t.dtype == MHUB_F32;
    for (int d = 0; same && d < t.ndim; d++)
        same = t.shape[d] == p->value.shape[d];
    return same ? MHUB_OK
                : mhub_error(MHUB_ERR_PARSE, "checkpoint %s: tensor %s has another shape or "
                             "dtype than the model's f32 parameter",
                             mhub_safetensors_path(st), name);
}

/* Before touching the engine: every tensor there, with the right shape. */
static mhub_status check_tensors(mhub_dp_engine *e, const manifest *m, const shard_set *set)
{
    const mhub_param_list *pl = mhub_dp_engine_params(e);
    if (m->params != pl->count)
        return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint has %d parameters, the model %d",
                          m->params, pl->count);
    int *expect = calloc((size_t)m->dp_size, sizeof *expect);
    if (!expect)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "tensor counts");
    char name[1024];
    mhub_status s = MHUB_OK;
    for (int i = 0; s == MHUB_OK && i < pl->count; i++) {
        const mhub_param *p = &pl->items[i];
        const mhub_safetensors *st = set->files[i % m->dp_size];
        for (int w = -1; s == MHUB_OK && w < mhub_dp_engine_state_count(e, i); w++) {
            tensor_name(name, sizeof name, p->name,
                        w < 0 ? NULL : mhub_dp_engine_state_name(e, i, w));
            s = check_tensor(st, p, name);
            expect[i % m->dp_size]++;
        }
    }
    /* extra tensors mean state this optimizer would silently drop */
    for (int r = 0; s == MHUB_OK && r < m->dp_size; r++)
        if (mhub_safetensors_count(set->files[r]) != expect[r])
            s = mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint %s holds %d tensors where this "
                           "model and optimizer have %d (written with another optimizer?)",
                           mhub_safetensors_path(set->files[r]),
                           mhub_safetensors_count(set->files[r]), expect[r]);
    free(expect);
    return s;
}

static mhub_status copy_in(mhub_dp_engine *e, const manifest *m, const shard_set *set)
{
    const mhub_param_list *pl = mhub_dp_engine_params(e);
    char name[1024];
    mhub_status s = MHUB_OK;
    for (int i = 0; s == MHUB_OK && i < pl->count; i++) {
        const mhub_param *p = &pl->items[i];
        const mhub_safetensors *st = set->files[i % m->dp_size];
        float *buf = malloc((size_t)(p->value.numel ? p->value.numel : 1) * sizeof(float));
        if (!buf)
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "checkpoint: buffer for %s", p->name);
        for (int w = -1; s == MHUB_OK && w < mhub_dp_engine_state_count(e, i); w++) {
            tensor_name(name, sizeof name, p->name,
                        w < 0 ? NULL : mhub_dp_engine_state_name(e, i, w));
            s = mhub_safetensors_read_f32(st, name, p->value.shape, p->value.ndim, buf);
            if (s == MHUB_OK)
                s = w < 0 ? mhub_dp_engine_set_param(e, i, buf)
                          : mhub_dp_engine_set_state(e, i, w, buf);
        }
        free(buf);
    }
    if (s == MHUB_OK)
        s = mhub_dp_engine_set_optim_steps(e, m->optim_steps);
    return s;
}

/* This rank's checks, in the order a user would fix them. */
static mhub_status open_and_check(const char *path, mhub_dp_engine *e, const mhub_comm *dp,
                                  const mhub_provider_config *cfg,
                                  const mhub_checkpoint_setting *run, int run_count, char *ckpt,
                                  size_t size, manifest *m, shard_set *set, char *changed)
{
    MHUB_TRY(resolve(path, ckpt, size));
    MHUB_TRY(read_manifest(ckpt, m));
    /* m->engine is informational: the tensors are engine-neutral */
    MHUB_TRY(check_config(ckpt, cfg));
    MHUB_TRY(check_run(ckpt, m, run, run_count, changed, MHUB_CHECKPOINT_CHANGED_BYTES));
    MHUB_TRY(verify_shards(ckpt, m, dp->rank, dp->size));
    MHUB_TRY(shards_open(ckpt, m, set));
    return check_tensors(e, m, set);
}

static mhub_status check_load_args(const char *path, const mhub_dp_engine *e,
                                   const mhub_provider_config *cfg,
                                   const mhub_checkpoint_setting *run, int run_count)
{
    if (!path || !e || !cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path, engine or config is NULL");
    MHUB_TRY(check_path(path));
    return check_settings(run, run_count);
}

/* Phase 1 (local, agreed): arguments, the files, the settings. Phase 2
 * (local, agreed): the copy into the engine; its setters keep each
 * rank's part without communicating. */
mhub_status mhub_checkpoint_load(const char *path, mhub_dp_engine *e, mhub_comm *dp,
                                 const mhub_provider_config *cfg,
                                 const mhub_checkpoint_setting *run, int run_count,
                                 mhub_checkpoint_info *info)
{
    if (!dp)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "dp is NULL");
    char ckpt[4096], changed[MHUB_CHECKPOINT_CHANGED_BYTES] = "";
    manifest m = {0};
    shard_set set = {0};
    mhub_status mine = check_load_args(path, e, cfg, run, run_count);
    if (mine == MHUB_OK)
        mine = open_and_check(path, e, dp, cfg, run, run_count, ckpt, sizeof ckpt, &m, &set,
                              changed);
    mhub_status s = mhub_dp_agree(dp, mine);
    if (s == MHUB_OK)
        s = mhub_dp_agree(dp, copy_in(e, &m, &set));
    if (s == MHUB_OK && info) {
        *info = (mhub_checkpoint_info){.step = m.step, .optim_steps = m.optim_steps,
                                       .seed = m.seed, .dp_size = m.dp_size};
        snprintf(info->changed, sizeof info->changed, "%s", changed);
    }
    shards_close(&set);
    manifest_free(&m);
    return s;
}
