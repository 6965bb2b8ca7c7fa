/* cfg.h: the server's settings. Every key has a type, a range and a built-in default, and is
 * set, from lowest to highest precedence, by config/default.json, a --config file, environment
 * variables MAMBABYTE_<KEY> and command-line flags --<key> (underscores may be dashes).
 * Unknown keys, wrong types and out-of-range values are errors that name the key and source. */
#ifndef CFG_H
#define CFG_H

#include <stddef.h>
#include <stdio.h>

typedef struct cfg {
    char model[1024];     /* model directory (-m) */
    char draft[1024];     /* drafter directory (--draft), empty: none */
    char model_name[128]; /* id reported by /v1/models; empty: the model folder's name */
    char host[256];       /* address to listen on */
    int port;             /* 0: any free port */
    char api_key[256];    /* empty: no authentication */
    char device[32];      /* auto, cpu, cuda or cuda:N */
    int threads;          /* CPU engine threads, 0: one per core */
    int slots;            /* state pool slots (sequences resident at once); 0: by device */
    int max_batch_tokens; /* tokens fed by one forward, all sequences together */
    int prefill_chunk;    /* prompt bytes one sequence feeds per step */
    double prefill_stall; /* prompt bytes beside decoding add at most this many steps (srv_pace) */
    int lookup;           /* speculative decoding by prompt lookup: key bytes, 0: off */
    int max_draft_bytes;  /* speculative decoding with the drafter: bytes per draft at most */
    double draft_min_confidence; /* a draft ends before the drafter's confidence falls below */
    int queue_limit;             /* requests waiting for a slot before 429 */
    int max_body_bytes;          /* larger request bodies get 413 */
    int max_prompt_bytes;        /* longer prompts get 400 */
    int max_tokens_limit;        /* largest max_tokens a request may ask for (bytes) */
    int default_max_tokens;
    int max_stop;              /* stop strings per request */
    int max_stop_bytes;        /* bytes per stop string */
    double request_timeout_s;  /* deadline of a request from arrival to its last byte */
    double shutdown_timeout_s; /* SIGTERM: how long running requests may finish */
    int max_connections;
    int connection_timeout_s;      /* idle HTTP connections are closed after this */
    int max_connections_per_ip;    /* heads in progress per address at the full deadline */
    double request_read_timeout_s; /* head within this of connecting, body within this after */
    int http_threads;              /* libmicrohttpd event-loop threads */
    double keepalive_s;            /* SSE keep-alive comment interval while a stream waits */
    char cors_origins[1024];       /* comma-separated allowed origins, "*" or "" (no CORS) */
    int max_sessions;              /* sessions in memory, resident in slots or spilled to host */
    char session_dir[1024];        /* where sessions are saved */
    double max_spill_bytes;        /* host memory for spilled session states; past it, to disk */
    double session_ttl_s;          /* idle sessions are deleted after this; 0: never */
    int log_requests;              /* one line per request on stderr */
    char daemon_id[128];           /* X-Mambabyte-Daemon on every answer; "": <hostname>:<port> */
    int strict_fields;             /* unknown request fields: 400 instead of ignored */
    char model_aliases[1024];      /* comma-separated other names of the model; "*": any name */
} cfg;

/* Fills c from the layers above. argv holds only the flags (no subcommand name); the first
 * argument that is not a flag is an error. Returns 0, or -1 with a message in err. */
int cfg_load(cfg *c, int argc, char **argv, char *err, size_t err_len);

/* Applies one JSON object of settings (a config file's text) on top of c; source names the
 * file in error messages. Exposed for the tests and the fuzzer. */
int cfg_apply_json(cfg *c, const char *text, size_t len, const char *source, char *err,
                   size_t err_len);

/* The built-in defaults, which config/default.json restates. */
void cfg_defaults(cfg *c);

/* Writes the usage text of the flags. */
void cfg_usage(FILE *f);

#endif
