#!/bin/sh
# Trains the drafter's SentencePiece tokenizer with spm_train (Debian package `sentencepiece`).
# usage: tools/train/train_tokenizer.sh TRAIN_TEXT OUT_PREFIX
#   TRAIN_TEXT: the decompressed train split (books_train_1 + "\f\n" + books_train_2)
#   writes OUT_PREFIX.model and OUT_PREFIX.vocab
# Settings chosen so that decode(encode(text)) == text byte for byte for valid UTF-8 text
# (see tools/train/README.md for the exceptions): identity normalization, no dummy prefix,
# no whitespace folding, byte fallback for every character outside the vocabulary.
set -e
in=${1:?train text}
out=${2:?output prefix}
spm_train --input="$in" --model_prefix="$out" \
  --model_type=unigram --vocab_size=4096 \
  --normalization_rule_name=identity --add_dummy_prefix=false \
  --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true \
  --split_digits=true --byte_fallback=true --character_coverage=0.9999 \
  --input_sentence_size=2000000 --shuffle_input_sentence=true --seed_sentencepiece_size=1000000 \
  --max_sentence_length=16384 --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --random_seed=1234 --num_threads="${SPM_THREADS:-2}"
