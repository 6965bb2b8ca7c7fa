/* test_loader.c: bad checkpoints and configs end in one clear error naming the file and the
 * tensor or key, never a crash. Each case rewrites a fixture (header edited through cJSON, data
 * kept) into build/. */
#include <cJSON.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "internal.h"

#define SRC "tests/fixtures/tiny-byte-tied/"
#define DIR "build/bad-ckpt"

static uint8_t *orig;
static size_t orig_len, orig_hlen;

static void write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Writes DIR/model.safetensors with the header `hdr` (printed JSON) and the original data. */
static void write_with_header(const char *hdr, uint64_t claimed_len) {
    size_t hl = strlen(hdr), data = orig_len - 8 - orig_hlen;
    uint8_t *buf = malloc(8 + hl + data);
    uint64_t n = claimed_len ? claimed_len : hl;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memcpy(buf + 8 + hl, orig + 8 + orig_hlen, data);
    write_bytes(DIR "/model.safetensors", buf, 8 + hl + data);
    free(buf);
}

static cJSON *header(void) {
    return cJSON_ParseWithLength((const char *)orig + 8, orig_hlen);
}

static void write_json(cJSON *h) {
    char *s = cJSON_PrintUnformatted(h);
    write_with_header(s, 0);
    free(s);
    cJSON_Delete(h);
}

/* Loads DIR and expects failure with every needle in the message. */
static void expect_error(const char *what, const char *n1, const char *n2) {
    mb_err e = {{0}};
    mb_backend_opts o = {1, MB_DEVICE_CPU, 0};
    mb_model *m = mb_model_load(DIR, &o, &e);
    CHECK(m == NULL, "%s: loaded a bad checkpoint", what);
    mb_model_free(m);
    CHECK(strstr(e.msg, n1) && (!n2 || strstr(e.msg, n2)), "%s: message '%s' lacks '%s' / '%s'",
          what, e.msg, n1, n2 ? n2 : "");
    printf("     %-22s -> %s\n", what, e.msg);
}

static void set_shape(cJSON *h, const char *name, int a, int b) {
    cJSON *t = cJSON_GetObjectItem(h, name);
    cJSON_ReplaceItemInObject(t, "shape", cJSON_CreateIntArray((int[]){a, b}, 2));
}

static void test_bad_checkpoints(void) {
    mkdir("build", 0755);
    mkdir(DIR, 0755);
    size_t cl;
    char *cfg = read_file(SRC "config.json", &cl);
    write_bytes(DIR "/config.json", cfg, cl);
    orig = read_file(SRC "model.safetensors", &orig_len);
    CHECK(orig != NULL, "fixture");
    if (!orig) return;
    for (int i = 7; i >= 0; i--) orig_hlen = orig_hlen << 8 | orig[i];

    write_bytes(DIR "/model.safetensors", orig, orig_len - 100);
    expect_error("truncated", "model.safetensors", "backbone.norm_f.weight");

    cJSON *h = header();
    set_shape(h, "backbone.layers.1.mixer.x_proj.weight", 72, 64); /* same bytes, wrong shape */
    write_json(h);
    expect_error("wrong shape", "backbone.layers.1.mixer.x_proj.weight", "[72, 64]");

    h = header();
    set_shape(h, "backbone.layers.0.mixer.in_proj.weight", 256, 65); /* span mismatch */
    write_json(h);
    expect_error("shape vs span", "backbone.layers.0.mixer.in_proj.weight", "span");

    h = header();
    cJSON_DeleteItemFromObject(h, "backbone.layers.1.mixer.D");
    write_json(h);
    expect_error("missing tensor", "backbone.layers.1.mixer.D", "missing");

    h = header();
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "backbone.layers.0.mixer.A_log"), "dtype",
                              cJSON_CreateString("Q4_K"));
    write_json(h);
    expect_error("unknown dtype", "backbone.layers.0.mixer.A_log", "Q4_K");

    h = header();
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "backbone.layers.0.mixer.D"), "dtype",
                              cJSON_CreateString("I32"));
    write_json(h);
    expect_error("unsupported dtype", "backbone.layers.0.mixer.D", "unsupported dtype");

    h = header();
    cJSON *off =
        cJSON_GetObjectItem(cJSON_GetObjectItem(h, "backbone.layers.0.mixer.D"), "data_offsets");
    int b = cJSON_GetArrayItem(off, 0)->valueint;
    cJSON *off2 = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "backbone.layers.0.mixer.A_log"),
                                      "data_offsets");
    cJSON_ReplaceItemInArray(off2, 0, cJSON_CreateNumber(b + 4));
    cJSON_ReplaceItemInArray(off2, 1, cJSON_CreateNumber(b + 4 + 128 * 16 * 4));
    write_json(h);
    expect_error("overlap", "overlap", "backbone.layers.0.mixer");

    write_with_header("{}", 1ull << 40);
    expect_error("absurd header", "absurd", "model.safetensors");

    write_with_header("{\"a\": [1, 2", 0);
    expect_error("bad JSON", "not a JSON object", "model.safetensors");

    h = header();
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "backbone.norm_f.weight"), "shape",
                              cJSON_CreateIntArray((int[]){-64}, 1));
    write_json(h);
    expect_error("negative dim", "backbone.norm_f.weight", "shape[0]");

    write_bytes(DIR "/model.safetensors", orig, orig_len);
    write_bytes(DIR "/config.json", "{\"hidden_size\": 64}", 19);
    expect_error("config missing key", "config.json", "num_hidden_layers");
    write_bytes(DIR "/config.json", "not json", 8);
    expect_error("config not JSON", "config.json", "not a JSON object");
    write_bytes(DIR "/config.json", cfg, cl);
    mb_err e;
    mb_model *m = mb_model_load(DIR, NULL, &e);
    CHECK(m != NULL, "the restored checkpoint loads: %s", e.msg);
    mb_model_free(m);
    remove(DIR "/model.safetensors");
    expect_error("no weights", DIR, "no .safetensors");
    free(cfg);
    free(orig);
}

/* The parser on small hostile buffers (the fuzz target goes further). */
static void test_parser_edges(void) {
    mb_st_file f;
    mb_err e;
    uint8_t tiny[4] = {0};
    CHECK(mb_st_parse(&f, tiny, 4, "x", &e) == -1 && strstr(e.msg, "too short"), "%s", e.msg);
    uint8_t lie[16] = {200};
    CHECK(mb_st_parse(&f, lie, 16, "x", &e) == -1 && strstr(e.msg, "truncated"), "%s", e.msg);
    const char *h =
        "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"__metadata__\":{}}";
    uint8_t buf[256] = {0};
    size_t hl = strlen(h);
    buf[0] = (uint8_t)hl;
    memcpy(buf + 8, h, hl);
    CHECK(mb_st_parse(&f, buf, 8 + hl + 8, "x", &e) == 0 && f.n == 1 && f.t[0].n_bytes == 8, "%s",
          e.msg);
    mb_st_close(&f);
    CHECK(mb_st_parse(&f, buf, 8 + hl + 4, "x", &e) == -1 && strstr(e.msg, "past the end"), "%s",
          e.msg);
}

/* config.json values out of range are errors naming the key, never a cast of an out-of-range
 * double or an int overflow (UBSan aborts this test on either, as it did before the checks). */
static void test_config_values(void) {
    static const struct {
        const char *json, *needle;
    } bad[] = {
        {"{\"hidden_size\": 1e30, \"num_hidden_layers\": 2, \"vocab_size\": 256}", "hidden_size"},
        {"{\"hidden_size\": -64, \"num_hidden_layers\": 2, \"vocab_size\": 256}", "hidden_size"},
        {"{\"hidden_size\": 64.5, \"num_hidden_layers\": 2, \"vocab_size\": 256}", "hidden_size"},
        {"{\"hidden_size\": 64, \"num_hidden_layers\": 2, \"vocab_size\": -1e300}", "vocab_size"},
        {"{\"hidden_size\": 16777216, \"num_hidden_layers\": 2, \"vocab_size\": 256, "
         "\"expand\": 16777216}",
         "expand x d_model"},
        {"{\"d_model\": 64, \"n_layer\": 2, \"vocab_size\": 256, \"ssm_cfg\": {\"d_state\": 1e19}}",
         "d_state"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mb_config c;
        int pad, rms;
        mb_err e = {{0}};
        int rc =
            mb_config_parse(bad[i].json, strlen(bad[i].json), "config.json", &c, &pad, &rms, &e);
        CHECK(rc == -1 && strstr(e.msg, bad[i].needle), "case %zu: rc %d, '%s'", i, rc, e.msg);
    }
    const char *ok = "{\"hidden_size\": 64, \"num_hidden_layers\": 2, \"vocab_size\": 256}";
    mb_config c;
    int pad, rms;
    mb_err e = {{0}};
    CHECK(mb_config_parse(ok, strlen(ok), "config.json", &c, &pad, &rms, &e) == 0 &&
              c.d_inner == 128 && c.dt_rank == 4,
          "a good config: %s", e.msg);
}

int main(void) {
    RUN(test_bad_checkpoints);
    RUN(test_parser_edges);
    RUN(test_config_values);
    return check_failures ? 1 : 0;
}
