/* srv_serve.c: `mambabyte serve`: settings, then the HTTP daemon (answering /health with 503
 * while the model loads), the model and the scheduler, then wait for SIGTERM/SIGINT and shut
 * down gracefully: refuse new work, let running requests finish until shutdown_timeout_s, then
 * cancel the rest. */
#include "serve.h"
#include "cfg.h"
#include "srv_http.h"
#include "srv_metrics.h"
#include "spm.h"
#include "srv_sched.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static const char *base_name(const char *path, char *buf, size_t n) {
    snprintf(buf, n, "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    const char *slash = strrchr(buf, '/');
    return slash ? slash + 1 : buf;
}

/* slots = 0: 64 on the CPU; on a GPU as many as fit in its memory, up to 1024 (a scheduler
 * step looks at every running sequence), the drafter's two slots per slot included (dm). */
static int default_slots(const mb_model *m, const mb_model *dm, int max_batch_tokens) {
    if (!mb_model_on_gpu(m)) return 64;
    double fit = mb_model_fit_slots(m, max_batch_tokens);
    if (dm && fit > 0) {
        double dfit = mb_model_fit_slots(dm, max_batch_tokens); /* both share the memory */
        fit = dfit > 0 ? 1 / (1 / fit + 2 / dfit) : 0;
    }
    return fit > 1024 ? 1024 : (int)fit;
}

/* The drafter (speculative decoding): its tokenizer and model from dir, on the byte model's
 * device (one thread on the CPU: it is small, and a second team of spinning threads would take
 * the byte model's cores). 0, or -1 with e filled. */
static int load_drafter(const char *dir, const mb_model *m, const mb_backend_opts *o,
                        spm_tokenizer **tok, mb_model **dm, mb_err *e) {
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    if (!(*tok = spm_load(path, e))) return -1;
    mb_backend_opts d = {.n_threads = 1, .device = MB_DEVICE_CPU};
    if (mb_model_on_gpu(m)) d = (mb_backend_opts){.device = MB_DEVICE_CUDA, .gpu = o->gpu};
    if (!(*dm = mb_model_load(dir, &d, e))) return -1;
    if (mb_model_config(*dm)->n_vocab != spm_vocab(*tok))
        return mb_fail(e, "drafter %s: the model's vocabulary (%d) is not its tokenizer's (%d)",
                       dir, mb_model_config(*dm)->n_vocab, spm_vocab(*tok));
    fprintf(stderr, "mambabyte serve: drafter %s on %s\n", dir, mb_model_device(*dm));
    return 0;
}

/* Loads the model and says which device runs it and why. */
static mb_model *load_model(const cfg *c, const mb_backend_opts *o, mb_err *e) {
    mb_model *m = mb_model_load(c->model, o, e);
    if (m)
        fprintf(stderr, "mambabyte serve: device %s: %s\n", mb_model_device(m),
                mb_model_device_note(m));
    return m;
}

int srv_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cfg_usage(stdout);
            return 0;
        }
    cfg c;
    char err[512];
    if (cfg_load(&c, argc - 1, argv + 1, err, sizeof err)) {
        fprintf(stderr, "mambabyte serve: %s\n", err);
        return 2;
    }
    /* Signals are taken by sigwait below; every thread started from here inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv_metrics *mx = srv_metrics_new();
    srv_http *h = mx ? srv_http_start(&c, mx, err, sizeof err) : NULL;
    if (!h) {
        fprintf(stderr, "mambabyte serve: %s\n", mx ? err : "out of memory");
        srv_metrics_free(mx);
        return 1;
    }
    fprintf(stderr, "mambabyte serve: listening on http://%s:%d, loading %s\n", c.host,
            srv_http_port(h), c.model);
    mb_err e;
    mb_backend_opts o = {.n_threads = c.threads};
    mb_model *m = NULL, *dm = NULL;
    spm_tokenizer *tok = NULL;
    srv_sched *s = NULL;
    int rc = 1;
    if (mb_device_parse(c.device, &o)) {
        fprintf(stderr, "mambabyte serve: device: '%s' is not auto, cpu, cuda or cuda:N\n",
                c.device);
    } else if (!(m = load_model(&c, &o, &e))) {
        fprintf(stderr, "mambabyte serve: %s\n", e.msg);
    } else if (c.draft[0] && load_drafter(c.draft, m, &o, &tok, &dm, &e)) {
        fprintf(stderr, "mambabyte serve: %s\n", e.msg);
    } else if (!c.slots && !(c.slots = default_slots(m, dm, c.max_batch_tokens))) {
        fprintf(stderr, "mambabyte serve: not one slot fits in the memory of %s\n",
                mb_model_device(m));
    } else if (mb_model_config(m)->n_vocab != 256) {
        fprintf(stderr,
                "mambabyte serve: %s has a vocabulary of %d; the server needs a byte "
                "model (256)\n",
                c.model, mb_model_config(m)->n_vocab);
    } else if (!(s = srv_sched_start(m, dm, tok, &c, mx, &e))) {
        fprintf(stderr, "mambabyte serve: %s\n", e.msg);
    } else {
        char buf[1024];
        const char *name = c.model_name[0] ? c.model_name : base_name(c.model, buf, sizeof buf);
        srv_http_ready(h, s, name, mb_model_config(m));
        fprintf(stderr, "mambabyte serve: ready: model %s, %d slots on %s%s\n", name, c.slots,
                mb_model_device(m), dm ? ", speculative decoding with the drafter" : "");
        int sig = 0;
        sigwait(&sigs, &sig);
        fprintf(stderr, "mambabyte serve: %s: finishing running requests (up to %gs)\n",
                strsignal(sig), c.shutdown_timeout_s);
        srv_http_draining(h);
        srv_sched_drain(s, srv_now() + c.shutdown_timeout_s);
        rc = srv_sched_device_lost(s) ? 1 : 0;
    }
    srv_http_stop(h);
    srv_sched_stop(s);
    mb_model_free(dm);
    spm_free(tok);
    mb_model_free(m);
    srv_metrics_free(mx);
    if (!rc) fprintf(stderr, "mambabyte serve: stopped\n");
    return rc;
}
