/* srv_response.h: the bodies of generation answers: whole JSON responses for the OpenAI and
 * native endpoints, and the Server-Sent Events stream, fed by MHD's content reader callback. */
#ifndef SRV_RESPONSE_H
#define SRV_RESPONSE_H

#include "srv_job.h"

#include <sys/types.h>

/* The whole answer to a finished job, malloc'd JSON: OpenAI text_completion for
 * SRV_API_COMPLETIONS, the native object (bytes_base64, seed, session, timings) otherwise. */
char *srv_response_body(const srv_job *j, const char *model, long created);
/* The OpenAI answer to several completions (n, best_of, a list of prompts), all finished: jobs
 * in order, best_of per prompt; of each prompt's, n are kept (those of highest mean raw
 * log-probability per byte when best_of > n), with index p * n + rank. NULL when out of memory. */
char *srv_response_choices(srv_job *const *jobs, int n_jobs, int best_of, int n, const char *model,
                           long created);

typedef struct srv_stream srv_stream;

/* The Server-Sent Events of an admitted job; it takes its own reference. Never blocks: the HTTP
 * layer fills, takes, and parks the connection when there is nothing to send. */
srv_stream *srv_stream_new(srv_job *j, const char *model, long created);
void srv_stream_free(srv_stream *st);
/* When the unsent buffer is empty, frames what the job has shown since the last call as ONE
 * event (only whole UTF-8 sequences; stop-string prefixes are never shown by the job), and the
 * closing events (finish reason, then "data: [DONE]") once it is done. Returns 1 when there is
 * something to send, 0 when there is nothing new, -1 when out of memory. */
int srv_stream_fill(srv_stream *st);
/* Queues an SSE comment, ": keep-alive", which clients ignore. -1 when out of memory. */
int srv_stream_keepalive(srv_stream *st);
/* out_visible as of the last fill: the job has news when it shows more. */
size_t srv_stream_seen(const srv_stream *st);
/* Copies up to max unsent bytes into buf: their number (0: nothing buffered), or
 * MHD_CONTENT_READER_END_OF_STREAM once the last event has been taken. */
ssize_t srv_stream_take(srv_stream *st, char *buf, size_t max);

const char *srv_finish_name(srv_finish f);

#endif
