#!/usr/bin/python3
"""Reference ids for test_sentencepiece.cpp from Debian's python3-sentencepiece.

Usage: /usr/bin/python3 sp_reference.py MODEL TEXTS.json
TEXTS.json holds a JSON list of strings; prints a JSON list with the ids of each (no BOS/EOS).
"""
import json
import sys

import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    texts = json.load(f)
print(json.dumps([sp.encode(t) for t in texts]))
