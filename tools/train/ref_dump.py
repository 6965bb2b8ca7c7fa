#!/usr/bin/env python3
"""ref_dump.py: the reference log-probabilities of an exported model folder (what `train.py
--ref-json` writes at the end of a run), for tests/train/test_export.py: the float32 forward of
the exported weights on train.py's REF_TEXT (bytes, or the tokenizer's ids after BOS for a model
folder that holds `tokenizer.model`). For a run that did not write them; runs on the CPU.

  tools/train/ref_dump.py MODEL_DIR OUT_JSON"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import config_from_hf  # noqa: E402
from train import Tok, load_export, reference_dump, reference_ids  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d, out = sys.argv[1:]
    cfg = config_from_hf(json.load(open(os.path.join(d, "config.json"))))
    tok_path = os.path.join(d, "tokenizer.model")
    ids = reference_ids(Tok(tok_path) if os.path.exists(tok_path) else None)
    reference_dump(load_export(d, cfg, "cpu"), ids, out, "cpu")
    print(f"{out}: {len(ids)} ids")


if __name__ == "__main__":
    main()
