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

/* The Server-Sent Events of admitted jobs: one, or the n completions of one request (n, a list
 * of prompts; never best_of above n) in answer order, whose events interleave as they come, each
 * choice with its job's index. It takes its own reference to each. Never blocks: the HTTP layer
 * fills, takes, and parks the connection when there is nothing to send. */
srv_stream *srv_stream_new(srv_job *const *jobs, int n, const char *model, long created);
void srv_stream_free(srv_stream *st);
/* When the unsent buffer is empty, frames what each job has shown since the last call as ONE
 * event per job (only whole UTF-8 sequences; stop-string prefixes are never shown by the job),
 * and each job's closing event (its finish reason) once it is done; after the last, the usage
 * chunk (stream_options.include_usage, summed over the jobs) and "data: [DONE]". A failed job's
 * error event ends the stream. Returns 1 when there is something to send, 0 when there is
 * nothing new, -1 when out of memory. */
int srv_stream_fill(srv_stream *st);
/* Queues an SSE comment, ": keep-alive", which clients ignore. -1 when out of memory. */
int srv_stream_keepalive(srv_stream *st);
/* 1 when a job has news since the last fill (it shows more bytes, or it is done), else 0. */
int srv_stream_news(srv_stream *st);
/* Copies up to max unsent bytes into buf: their number (0: nothing buffered), or
 * MHD_CONTENT_READER_END_OF_STREAM once the last event has been taken. */
ssize_t srv_stream_take(srv_stream *st, char *buf, size_t max);

const char *srv_finish_name(srv_finish f);

#endif
