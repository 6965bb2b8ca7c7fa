// spm.cc: the C interface of spm.h over SentencePiece's C++ processor.
#include "spm.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct spm_tokenizer {
    sentencepiece::SentencePieceProcessor sp;
    std::vector<std::string> piece; // bytes of each id
    int byte_id[256];               // the byte pieces <0xNN>
};

extern "C" spm_tokenizer *spm_load(const char *path, mb_err *e) {
    spm_tokenizer *t = new (std::nothrow) spm_tokenizer;
    if (!t) {
        mb_fail(e, "out of memory");
        return nullptr;
    }
    const auto st = t->sp.Load(path);
    if (!st.ok()) {
        mb_fail(e, "%s: cannot load the SentencePiece model: %s", path, st.ToString().c_str());
        delete t;
        return nullptr;
    }
    const int n = t->sp.GetPieceSize();
    t->piece.resize((size_t)n);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int id = 0; id < n; id++) {
        if (t->sp.IsControl(id) || t->sp.IsUnknown(id)) continue;
        const std::string p = t->sp.IdToPiece(id);
        unsigned v;
        if (t->sp.IsByte(id) && std::sscanf(p.c_str(), "<0x%2X>", &v) == 1 && v < 256) {
            t->piece[(size_t)id] = std::string(1, (char)v);
            t->byte_id[v] = id;
            continue;
        }
        std::string out;
        for (size_t i = 0; i < p.size(); i++) {
            if (p.compare(i, 3, "\xe2\x96\x81") == 0) {
                out += ' ';
                i += 2;
            } else {
                out += p[i];
            }
        }
        t->piece[(size_t)id] = out;
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) {
            mb_fail(e, "%s: no byte piece <0x%02X> (the drafter's tokenizer needs byte fallback)",
                    path, b);
            delete t;
            return nullptr;
        }
    return t;
}

extern "C" void spm_free(spm_tokenizer *t) {
    delete t;
}
extern "C" int spm_vocab(const spm_tokenizer *t) {
    return t->sp.GetPieceSize();
}
extern "C" int spm_bos(const spm_tokenizer *t) {
    return t->sp.bos_id();
}

extern "C" const uint8_t *spm_piece(const spm_tokenizer *t, int id, int *len) {
    if (id < 0 || (size_t)id >= t->piece.size()) {
        *len = 0;
        return nullptr;
    }
    const std::string &p = t->piece[(size_t)id];
    *len = (int)p.size();
    return (const uint8_t *)p.data();
}

// Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one (overlong forms,
// surrogates and code points above U+10FFFF are not valid).
static size_t utf8_len(const uint8_t *s, size_t n) {
    const uint8_t c = s[0];
    size_t k;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        k = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        k = 4, cp = c & 0x07;
    else
        return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (k == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return k;
}

static bool push(int32_t v, int32_t **ids, size_t *n_ids, size_t *cap) {
    if (*n_ids == *cap) {
        const size_t c = *cap ? 2 * *cap : 64;
        int32_t *p = (int32_t *)std::realloc(*ids, c * sizeof(int32_t));
        if (!p) return false;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n_ids)++] = v;
    return true;
}

extern "C" int spm_encode(const spm_tokenizer *t, const uint8_t *text, size_t n, int32_t **ids,
                          size_t *n_ids, size_t *cap, mb_err *e) {
    std::vector<int> out;
    size_t i = 0;
    while (i < n) {
        // a run of valid UTF-8 without newlines goes to SentencePiece as one line
        size_t j = i, k;
        while (j < n && text[j] != '\n' && (k = utf8_len(text + j, n - j)) > 0) j += k;
        if (j > i) {
            const auto st = t->sp.Encode(std::string((const char *)text + i, j - i), &out);
            if (!st.ok()) return mb_fail(e, "tokenizer: %s", st.ToString().c_str());
            for (int id : out)
                if (!push(id, ids, n_ids, cap)) return mb_fail(e, "out of memory");
            i = j;
            continue;
        }
        if (!push(t->byte_id[text[i]], ids, n_ids, cap)) return mb_fail(e, "out of memory");
        i++;
    }
    return 0;
}
