/* cmd_loadgen.c: `mambabyte loadgen`, the load client: sends a workload of completion requests
 * to any OpenAI-compatible endpoint (or through the engine alone, --engine) and reports latency
 * and throughput in bytes. The parts are in lg_*.c (lg.h). */
#include <curl/curl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "cmd_engine.h"
#include "lg.h"

#define CMD "loadgen"

static const char loadgen_usage[] =
    "usage: mambabyte loadgen --url URL [options]\n"
    "Sends completion requests to URL and reports latency and throughput in bytes: a table on\n"
    "stdout, progress on stderr, every figure with --json FILE.\n"
    "  --url URL            http(s)://HOST:PORT (requests go to /v1/completions), or the full URL\n"
    "                       of an OpenAI-compatible completions endpoint, or of our native\n"
    "                       /v1/generate (output counted as exact bytes)\n"
    "  --engine DIR         no HTTP: the same workload through the engine in this process\n"
    "                       (closed loop; --threads N engine threads), to measure the daemon's "
    "cost\n"
    "  --concurrency N      closed loop: N requests in flight (default 1); with --rate, the most\n"
    "                       in flight at once (default: what the open-files limit allows)\n"
    "  --rate R             open loop: R requests/s on average, random arrivals\n"
    "  --burstiness B       gamma shape of the arrival gaps: 1 Poisson (default), < 1 burstier\n"
    "  --requests N         requests to measure (default 100 unless --duration)\n"
    "  --duration S         send for S seconds (with --requests: whichever ends first)\n"
    "  --warmup N           requests sent first, not measured (default 1; 0: none); a warm-up\n"
    "                       that fails entirely stops the run with the server's answer\n"
    "  --prompts FILE       prompts from a text file: documents separated by lines holding\n"
    "                       only a form feed, each cut into prompts of --prompt-bytes\n"
    "                       (default: synthetic prompts of random words)\n"
    "  --prompt-bytes N     bytes per prompt (default 256)\n"
    "  --max-tokens N       max_tokens of each request (default 128)\n"
    "  --temperature T, --top-k K, --top-p P, --min-p P   sampling (sent only when given)\n"
    "  --seed S             seed of the prompt order, the arrivals and the requests (request i\n"
    "                       has seed S + i): two runs with one seed send the same requests\n"
    "  --no-stream          whole answers (time to first byte is then the whole answer's time)\n"
    "  --speculative on|off sends \"speculative\": {\"enabled\": ...} (our extension)\n"
    "  --api-key KEY        Authorization: Bearer KEY\n"
    "  --model NAME         the request's \"model\" field\n"
    "  --timeout S          per request (default 600)\n"
    "  --slo ttfb:MS,tpob:MS  goodput: requests within these bounds (either may be left out)\n"
    "  --json FILE          settings, totals, latency summaries, /metrics figures, every request\n"
    "  --metrics URL        where to read Prometheus metrics before and after the run (default:\n"
    "                       /metrics on the endpoint's host); --no-metrics: none\n"
    "  --quiet              no progress line\n";

volatile int lg_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    if (lg_interrupted) _exit(130);
    lg_interrupted = 1;
}

/* Sockets this process may open: the soft limit on open files, raised to the hard one, less a
 * few for everything else. */
static long socket_room(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return 1024 - 64;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl)) getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > LG_MAX_CONCURRENCY + 64
               ? LG_MAX_CONCURRENCY
               : (long)rl.rlim_cur - 64;
}

int lg_may_send(const lg_opts *o, long sent, double now) {
    return (!o->requests || sent < o->requests) && (o->duration <= 0 || now < o->duration);
}

/* --slo ttfb:MS,tpob:MS (either part alone, in any order). */
static int slo_opt(const char *v, lg_opts *o) {
    char *s = strdup(v), *save = NULL;
    int rc = s ? 0 : -1;
    for (char *part = s ? strtok_r(s, ",", &save) : NULL; part && !rc;
         part = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(part, ':');
        float ms;
        if (!colon) {
            rc = -1;
            break;
        }
        *colon = 0;
        double *dst = !strcmp(part, "ttfb")   ? &o->slo_ttfb_ms
                      : !strcmp(part, "tpob") ? &o->slo_tpob_ms
                                              : NULL;
        rc = dst && !cli_real_opt(CMD, "slo", colon + 1, 0, 1, 1e9, &ms) ? 0 : -1;
        if (!rc) *dst = ms;
    }
    free(s);
    if (rc)
        fprintf(stderr, "mambabyte " CMD ": --slo %s: expected ttfb:MS,tpob:MS (milliseconds)\n",
                v);
    return rc;
}

/* The endpoint and the /metrics URL from --url: http or https, a host; no path (or "/") means
 * /v1/completions. A message and -1 for anything else. */
static int set_url(lg_opts *o, const char *metrics) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *path = NULL;
    int rc = -1;
    if (!u) {
        cli_die(CMD, "out of memory");
        return -1;
    }
    if (curl_url_set(u, CURLUPART_URL, o->url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        fprintf(stderr,
                "mambabyte " CMD ": --url %s: not a URL (expected http://HOST:PORT or the "
                "endpoint's full URL)\n",
                o->url);
        goto out;
    }
    if (strcmp(scheme, "http") && strcmp(scheme, "https")) {
        fprintf(stderr, "mambabyte " CMD ": --url %s: the scheme must be http or https\n", o->url);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK && strcmp(path, "/")) {
        size_t n = strlen(path), g = strlen("/v1/generate");
        o->native = n >= g && !strcmp(path + n - g, "/v1/generate");
    } else if (curl_url_set(u, CURLUPART_PATH, "/v1/completions", 0) != CURLUE_OK) {
        goto out;
    }
    if (curl_url_get(u, CURLUPART_URL, &o->endpoint, 0) != CURLUE_OK) goto out;
    if (metrics ? curl_url_set(u, CURLUPART_URL, metrics, 0) != CURLUE_OK
                : curl_url_set(u, CURLUPART_PATH, "/metrics", 0) != CURLUE_OK ||
                      curl_url_set(u, CURLUPART_QUERY, NULL, 0) != CURLUE_OK) {
        fprintf(stderr, "mambabyte " CMD ": --metrics %s: not a URL\n", metrics ? metrics : "");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_URL, &o->metrics_url, 0) != CURLUE_OK) goto out;
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(path);
    curl_url_cleanup(u);
    return rc;
}

/* Runs the warm-up; all of it failing ends the run with the first failure's cause, which is
 * where a wrong path, a wrong key or a wrong model name shows. */
static int warm_up(const lg_opts *o, const lg_prompts *p) {
    lg_run w = {0};
    mb_err e;
    if (lg_http_run(o, p, o->warmup, 0, &w, &e)) return cli_die(CMD, e.msg);
    int rc = 0;
    size_t ok = 0;
    for (size_t i = 0; i < w.n; i++) ok += w.rec[i].fail == LG_OK;
    if (w.n && !ok) {
        const lg_rec *x = &w.rec[0];
        char status[32] = "";
        if (x->fail == LG_HTTP) snprintf(status, sizeof status, "status %d: ", x->status);
        fprintf(stderr,
                "mambabyte " CMD ": every warm-up request to %s failed (%zu of %zu); the first: "
                "%s%s\n",
                o->engine ? o->engine : o->endpoint, w.n, w.n, status,
                x->why[0] ? x->why : "no message");
        rc = 1;
    }
    lg_run_free(&w);
    return rc;
}

static int run(lg_opts *o) {
    mb_err e;
    lg_prompts p;
    if (lg_prompts_load(&p, o->prompts, o->prompt_bytes, o->sampling.seed, &e))
        return cli_die(CMD, e.msg);
    int rc = 0;
    char *before = NULL, *after = NULL;
    lg_run r = {0};
    if (!o->engine && lg_http_probe(o, &e)) {
        rc = cli_die(CMD, e.msg);
        goto out;
    }
    if (!o->engine && o->warmup && (rc = warm_up(o, &p))) goto out;
    if (o->metrics_url) before = lg_http_get(o->metrics_url, o->api_key, 10, &e);
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);
    rc = o->engine ? lg_engine_run(o, &p, &r, &e) : lg_http_run(o, &p, 0, 1, &r, &e);
    sigaction(SIGINT, &old, NULL);
    if (rc) {
        rc = cli_die(CMD, e.msg);
        goto out;
    }
    if (before) after = lg_http_get(o->metrics_url, o->api_key, 10, &e);
    if (lg_report(o, &r, before, after, &e)) rc = cli_die(CMD, e.msg);
out:
    free(before);
    free(after);
    lg_run_free(&r);
    lg_prompts_free(&p);
    return rc;
}

int cmd_loadgen(int argc, char **argv) {
    enum {
        O_URL = 256,
        O_CONC,
        O_RATE,
        O_BURST,
        O_REQS,
        O_DUR,
        O_WARM,
        O_PROMPTS,
        O_PBYTES,
        O_MAXTOK,
        O_TEMP,
        O_TOPK,
        O_TOPP,
        O_MINP,
        O_SEED,
        O_NOSTREAM,
        O_SPEC,
        O_KEY,
        O_MODEL,
        O_TIMEOUT,
        O_SLO,
        O_JSON,
        O_METRICS,
        O_NOMETRICS,
        O_ENGINE,
        O_THREADS,
        O_QUIET
    };
    static const struct option opts[] = {{"url", 1, 0, O_URL},
                                         {"concurrency", 1, 0, O_CONC},
                                         {"rate", 1, 0, O_RATE},
                                         {"burstiness", 1, 0, O_BURST},
                                         {"requests", 1, 0, O_REQS},
                                         {"duration", 1, 0, O_DUR},
                                         {"warmup", 1, 0, O_WARM},
                                         {"prompts", 1, 0, O_PROMPTS},
                                         {"prompt-bytes", 1, 0, O_PBYTES},
                                         {"max-tokens", 1, 0, O_MAXTOK},
                                         {"temperature", 1, 0, O_TEMP},
                                         {"top-k", 1, 0, O_TOPK},
                                         {"top-p", 1, 0, O_TOPP},
                                         {"min-p", 1, 0, O_MINP},
                                         {"seed", 1, 0, O_SEED},
                                         {"no-stream", 0, 0, O_NOSTREAM},
                                         {"speculative", 1, 0, O_SPEC},
                                         {"api-key", 1, 0, O_KEY},
                                         {"model", 1, 0, O_MODEL},
                                         {"timeout", 1, 0, O_TIMEOUT},
                                         {"slo", 1, 0, O_SLO},
                                         {"json", 1, 0, O_JSON},
                                         {"metrics", 1, 0, O_METRICS},
                                         {"no-metrics", 0, 0, O_NOMETRICS},
                                         {"engine", 1, 0, O_ENGINE},
                                         {"threads", 1, 0, O_THREADS},
                                         {"quiet", 0, 0, O_QUIET},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    lg_opts o = {0};
    o.concurrency = -1, o.burstiness = 1, o.warmup = 1, o.prompt_bytes = 256;
    o.max_tokens = 128, o.stream = 1, o.speculative = -1, o.timeout_s = 600;
    mb_sampling_default(&o.sampling);
    const char *metrics = NULL;
    int no_metrics = 0, c, n;
    float x;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_URL:
            o.url = optarg;
            break;
        case O_CONC:
            if (cli_int_opt(CMD, "concurrency", optarg, 1, LG_MAX_CONCURRENCY, &o.concurrency))
                return 2;
            break;
        case O_RATE:
            if (cli_real_opt(CMD, "rate", optarg, 0, 1, 1e6, &x)) return 2;
            o.rate = x;
            break;
        case O_BURST:
            if (cli_real_opt(CMD, "burstiness", optarg, 0, 1, 1e3, &x)) return 2;
            o.burstiness = x;
            break;
        case O_REQS:
            if (cli_int_opt(CMD, "requests", optarg, 1, INT_MAX, &n)) return 2;
            o.requests = n;
            break;
        case O_DUR:
            if (cli_real_opt(CMD, "duration", optarg, 0, 1, 1e7, &x)) return 2;
            o.duration = x;
            break;
        case O_WARM:
            if (cli_int_opt(CMD, "warmup", optarg, 0, 1000000, &o.warmup)) return 2;
            break;
        case O_PROMPTS:
            o.prompts = optarg;
            break;
        case O_PBYTES:
            if (cli_int_opt(CMD, "prompt-bytes", optarg, 1, 1 << 24, &o.prompt_bytes)) return 2;
            break;
        case O_MAXTOK:
            if (cli_int_opt(CMD, "max-tokens", optarg, 1, 1 << 24, &o.max_tokens)) return 2;
            break;
        case O_TEMP:
            if (cli_real_opt(CMD, "temperature", optarg, 0, 0, 1e6, &o.sampling.temperature))
                return 2;
            o.temperature_set = 1;
            break;
        case O_TOPK:
            if (cli_int_opt(CMD, "top-k", optarg, 0, INT_MAX, &o.sampling.top_k)) return 2;
            o.top_k_set = 1;
            break;
        case O_TOPP:
            if (cli_real_opt(CMD, "top-p", optarg, 0, 1, 1, &o.sampling.top_p)) return 2;
            o.top_p_set = 1;
            break;
        case O_MINP:
            if (cli_real_opt(CMD, "min-p", optarg, 0, 0, 1, &o.sampling.min_p)) return 2;
            o.min_p_set = 1;
            break;
        case O_SEED:
            if (cli_seed_opt(CMD, optarg, &o.sampling.seed)) return 2;
            break;
        case O_NOSTREAM:
            o.stream = 0;
            break;
        case O_SPEC:
            if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
                fprintf(stderr, "mambabyte " CMD ": --speculative takes on or off, not '%s'\n",
                        optarg);
                return 2;
            }
            o.speculative = !strcmp(optarg, "on");
            break;
        case O_KEY:
            o.api_key = optarg;
            break;
        case O_MODEL:
            o.model = optarg;
            break;
        case O_TIMEOUT:
            if (cli_real_opt(CMD, "timeout", optarg, 0, 1, 1e6, &x)) return 2;
            o.timeout_s = x;
            break;
        case O_SLO:
            if (slo_opt(optarg, &o)) return 2;
            break;
        case O_JSON:
            o.json = optarg;
            break;
        case O_METRICS:
            metrics = optarg;
            break;
        case O_NOMETRICS:
            no_metrics = 1;
            break;
        case O_ENGINE:
            o.engine = optarg;
            break;
        case O_THREADS:
            if (cli_int_opt(CMD, "threads", optarg, 0, CLI_MAX_THREADS, &o.threads)) return 2;
            break;
        case O_QUIET:
            o.quiet = 1;
            break;
        case 'h':
            fputs(loadgen_usage, stdout);
            return 0;
        default:
            fputs(loadgen_usage, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mambabyte " CMD ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o.url == !o.engine) return cli_die(CMD, "give --url URL (or --engine DIR), one of them");
    if (o.engine && o.rate > 0)
        return cli_die(CMD, "--engine runs a closed loop: give --concurrency, not --rate");
    if (o.engine && o.concurrency > LG_ENGINE_MAX_CONCURRENCY)
        return cli_die(CMD, "--engine runs at most 256 requests at once (--concurrency)");
    if (o.concurrency < 0) o.concurrency = o.rate > 0 ? 0 : 1;
    if (!o.engine) { /* a socket per request in flight */
        long room = socket_room();
        if (o.concurrency > room) {
            fprintf(stderr,
                    "mambabyte " CMD ": --concurrency %d needs as many sockets; this process may "
                    "open %ld (ulimit -n)\n",
                    o.concurrency, room);
            return 2;
        }
        if (!o.concurrency) o.concurrency = (int)room; /* an open loop's cap */
    }
    if (!o.requests && o.duration <= 0) o.requests = 100;
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) return cli_die(CMD, "libcurl failed to start");
    int rc = o.url && set_url(&o, metrics) ? 2 : 0;
    if (no_metrics) {
        curl_free(o.metrics_url);
        o.metrics_url = NULL;
    }
    if (!rc) rc = run(&o);
    curl_free(o.endpoint);
    curl_free(o.metrics_url);
    curl_global_cleanup();
    return rc;
}
