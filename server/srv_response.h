/* srv_response.h: the bodies of generation answers: whole JSON responses for the OpenAI and
 * native endpoints, and the Server-Sent Events stream, fed by MHD's content reader callback. */
#ifndef SRV_RESPONSE_H
#define SRV_RESPONSE_H

#include "srv_job.h"

#include <sys/types.h>

/* The whole answer to a finished job, malloc'd JSON: OpenAI text_completion for
 * SRV_API_COMPLETIONS, the native object (bytes_base64, seed, session, timings) otherwise. */
char *srv_response_body(const srv_job *j, const char *model, long created);

typedef struct srv_stream srv_stream;

/* A stream over an admitted job; it takes its own reference. fd is the client's socket, watched
 * for a hang-up while waiting; *sent counts the body bytes handed to MHD. */
srv_stream *srv_stream_new(srv_job *j, const char *model, long created, int fd, size_t *sent);
/* MHD_ContentReaderCallback: blocks (thread-per-connection) until there is an event to send.
 * Text goes out only up to whole UTF-8 sequences; the last events are the finish reason and
 * "data: [DONE]". */
ssize_t srv_stream_read(void *cls, uint64_t pos, char *buf, size_t max);
/* MHD_ContentReaderFreeCallback. */
void srv_stream_free(void *cls);

const char *srv_finish_name(srv_finish f);

#endif
