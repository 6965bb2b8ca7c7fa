/* test_srv_config.c: the settings layers (default.json < --config file < MAMBABYTE_* < flags),
 * that config/default.json restates every built-in default, and that unknown keys, wrong types
 * and out-of-range values are errors naming the key. Run from the repository root. */
#include "cfg.h"
#include "check.h"

#include <cJSON.h>
#include <string.h>

static void test_default_json_matches_builtin(void) {
    size_t n = 0;
    char *text = read_file("config/default.json", &n);
    CHECK(text != NULL, "config/default.json not found (run from the repository root)");
    if (!text) return;
    cfg a, b;
    char err[256] = "";
    cfg_defaults(&a);
    cfg_defaults(&b);
    CHECK(!cfg_apply_json(&b, text, n, "default.json", err, sizeof err), "%s", err);
    CHECK(!memcmp(&a, &b, sizeof a), "config/default.json differs from the built-in defaults");
    /* and it names every key: as many members as the usage lists settings */
    cJSON *root = cJSON_ParseWithLength(text, n);
    char *usage = NULL;
    size_t ulen = 0;
    FILE *f = open_memstream(&usage, &ulen);
    cfg_usage(f);
    fclose(f);
    int keys = 0;
    for (char *p = strstr(usage, "\n  --"); p; p = strstr(p + 1, "\n  --")) keys++;
    CHECK(cJSON_GetArraySize(root) == keys, "default.json has %d keys, the table %d",
          cJSON_GetArraySize(root), keys);
    cJSON_Delete(root);
    free(usage);
    free(text);
}

static void test_layers(void) {
    const char *path = "/tmp/mb_test_cfg.json";
    FILE *f = fopen(path, "w");
    fputs("{\"port\": 1111, \"slots\": 7, \"api_key\": \"file\", \"log_requests\": false}", f);
    fclose(f);
    setenv("MAMBABYTE_SLOTS", "9", 1);
    setenv("MAMBABYTE_API_KEY", "env", 1);
    char *argv[] = {"--config",           (char *)path, "--api-key=flag", "-m", "some/dir",
                    "--max-batch-tokens", "64"};
    cfg c;
    char err[256] = "";
    CHECK(!cfg_load(&c, 7, argv, err, sizeof err), "%s", err);
    CHECK(c.port == 1111, "file sets port: %d", c.port);
    CHECK(c.slots == 9, "env beats file: %d", c.slots);
    CHECK(!strcmp(c.api_key, "flag"), "flag beats env: %s", c.api_key);
    CHECK(!strcmp(c.model, "some/dir"), "-m: %s", c.model);
    CHECK(c.log_requests == 0, "bool from file");
    CHECK(c.max_batch_tokens == 64 && c.prefill_chunk == 64, "chunk capped at the batch: %d",
          c.prefill_chunk);
    CHECK(c.queue_limit == 1024, "default stays: %d", c.queue_limit);
    unsetenv("MAMBABYTE_SLOTS");
    unsetenv("MAMBABYTE_API_KEY");
}

static void expect_error(int argc, char **argv, const char *needle) {
    cfg c;
    char err[256] = "";
    CHECK(cfg_load(&c, argc, argv, err, sizeof err) == -1, "accepted (want error with %s)", needle);
    CHECK(strstr(err, needle) != NULL, "error '%s' does not mention '%s'", err, needle);
}

static void test_errors(void) {
    char *a1[] = {"--no-such-key", "1"};
    expect_error(2, a1, "no-such-key");
    char *a2[] = {"--slots", "-1"};
    expect_error(2, a2, "slots");
    char *a3[] = {"--port", "80x"};
    expect_error(2, a3, "port");
    char *a4[] = {"--slots"};
    expect_error(1, a4, "needs a value");
    char *a5[] = {"stray"};
    expect_error(1, a5, "stray");
    char *a6[] = {"--log-requests", "maybe"};
    expect_error(2, a6, "log_requests");
    setenv("MAMBABYTE_SLOTZ", "3", 1);
    expect_error(0, NULL, "MAMBABYTE_SLOTZ");
    unsetenv("MAMBABYTE_SLOTZ");
    const char *files[][2] = {{"{\"slotz\": 1}", "slotz"},
                              {"{\"slots\": \"8\"}", "slots"},
                              {"{\"slots\": 2.5}", "integer"},
                              {"[1]", "object"},
                              {"{\"host\": 5}", "host"},
                              {"{\"max-connections\": 5}", "unknown"},
                              {"{\"slots\": 1, \"slots\": 2}", "twice"},
                              {"{\"slots\": 1} {\"slots\": 2}", "JSON"},
                              {"{", "JSON"}};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        cfg c;
        char err[256] = "";
        cfg_defaults(&c);
        CHECK(cfg_apply_json(&c, files[i][0], strlen(files[i][0]), "t.json", err, sizeof err) == -1,
              "accepted %s", files[i][0]);
        CHECK(strstr(err, files[i][1]) != NULL, "error '%s' lacks '%s'", err, files[i][1]);
    }
    char *a7[] = {"--default-max-tokens", "50", "--max-tokens-limit", "10"};
    expect_error(4, a7, "default_max_tokens");
}

int main(void) {
    RUN(test_default_json_matches_builtin);
    RUN(test_layers);
    RUN(test_errors);
    return check_failures != 0;
}
