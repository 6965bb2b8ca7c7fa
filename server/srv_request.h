/* srv_request.h: request bodies, parsed and validated with cJSON before anything queues them,
 * and the JSON error every failure turns into. */
#ifndef SRV_REQUEST_H
#define SRV_REQUEST_H

#include "mambabyte.h"

#include <stddef.h>
#include <stdint.h>

#define SRV_ID_MAX 65 /* session and request ids: up to 64 of [A-Za-z0-9_-] */

/* {"error": {"message", "type", "code"}} with the HTTP status it goes out with. */
typedef struct srv_error {
    int status;
    const char *type;
    const char *code;
    char message[256];
} srv_error;

/* Fills e and returns -1, for `return srv_error_set(...)`. */
int srv_error_set(srv_error *e, int status, const char *type, const char *code, const char *fmt,
                  ...) __attribute__((format(printf, 5, 6)));
/* The error as a malloc'd JSON body. */
char *srv_error_json(const srv_error *e);

typedef enum {
    SRV_API_COMPLETIONS,    /* POST /v1/completions (OpenAI) */
    SRV_API_GENERATE,       /* POST /v1/generate (native) */
    SRV_API_SESSION_CREATE, /* POST /v1/sessions: an optional prompt to prefill */
} srv_api;

typedef struct srv_limits {
    int strict_fields; /* unknown fields: 1 refused (400), 0 ignored and listed in r->ignored */
    int max_prompt_bytes;
    int max_tokens_limit;
    int default_max_tokens;
    int max_stop;
    int max_stop_bytes;
    double max_timeout_s;
} srv_limits;

#define SRV_TOP_MAX 20 /* logprobs: alternatives per byte at most */
/* bytes of log-probabilities one request's answers may keep (srv_job.c) */
#define SRV_SCORES_MAX  (64 << 20)
#define SRV_IGNORED_MAX 512 /* r->ignored: bytes of the list at most */
#define SRV_PROMPTS_MAX 64  /* prompts in one request at most */
#define SRV_CHOICES_MAX 64  /* n, best_of: completions of one prompt at most */

/* Penalties and bias over the 256 bytes, applied to the logits before each draw (plain and
 * speculative decoding alike): presence is subtracted from the logit of every byte the output
 * holds so far, frequency once per occurrence there; repetition (1: off) divides the positive
 * logits and multiplies the negative ones of bytes seen in the prompt or the output; bias[b] is
 * added to byte b's logit. */
typedef struct srv_penalty {
    float presence, frequency, repetition;
    int on; /* any of them differs from its neutral value */
    float bias[256];
} srv_penalty;

typedef struct srv_gen_req {
    srv_api api;
    uint8_t *prompt; /* prompt_len bytes (+ a NUL), exact: from a JSON string or base64 */
    size_t prompt_len;
    int max_tokens; /* output bytes */
    mb_sampling sampling;
    int seed_given; /* 0: the caller draws a seed and reports it */
    char **stops;
    int n_stops;
    int stream;
    char session[SRV_ID_MAX]; /* "" when the request has no session */
    double timeout_s;         /* the request's deadline, from arrival */
    /* "speculative": {"enabled", "max_draft_bytes", "lookup"} */
    int spec_enabled;   /* SRV_SPEC_AUTO (absent: the server decides), _OFF or _ON */
    int spec_max_draft; /* model drafts: bytes at most; 0: the server's max_draft_bytes */
    int spec_lookup;    /* prompt lookup key bytes, 0: off; -1: the server's lookup */
    srv_penalty pen;
    /* OpenAI completions only */
    uint8_t **more; /* a list of prompts: those after the first (prompt); n_more of them */
    size_t *more_len;
    int n_more;
    int n, best_of;    /* choices per prompt, and completions drawn to choose them from */
    int logprobs;      /* log-probabilities with this many alternatives per byte; -1: none */
    int echo;          /* the answer's text starts with the prompt */
    int include_usage; /* stream_options.include_usage: usage in a last chunk of its own */
    char *model;       /* the model the request names, NULL: none */
    char ignored[SRV_IGNORED_MAX]; /* unknown fields ignored, ", "-separated ("": none) */
} srv_gen_req;

enum { SRV_SPEC_AUTO = -1, SRV_SPEC_OFF = 0, SRV_SPEC_ON = 1 };
#define SRV_DRAFT_MAX 32 /* drafted bytes per round at most (model or lookup) */

/* Parses body for api. Unknown fields are refused when lim->strict_fields is set, else listed
 * in r->ignored (each name as header-safe text: other bytes become '?'). session_header is the
 * request's X-Session-Id (NULL: none): on the native API it names the session when the body does
 * not (a body that names another is refused), so a proxy can route on the header alone; on the
 * others it is refused. On success fills r (free with srv_gen_req_free) and returns 0; otherwise
 * fills e (400 with a message naming the field) and returns -1, leaving nothing to free. */
int srv_request_parse(srv_api api, const char *body, size_t len, const srv_limits *lim,
                      const char *session_header, srv_gen_req *r, srv_error *e);
void srv_gen_req_free(srv_gen_req *r);
/* A copy of r for one of its completions: prompt p (plen bytes), seed; without r->more.
 * Returns 0, or -1 when out of memory (dst then holds nothing to free). */
int srv_gen_req_copy(const srv_gen_req *r, const uint8_t *p, size_t plen, uint64_t seed,
                     srv_gen_req *dst);

/* 1 if s is a well-formed id (1..64 of [A-Za-z0-9_-]): ids become file names. */
int srv_id_valid(const char *s);

#endif
