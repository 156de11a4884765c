#!/usr/bin/env bash
# The peers live in their own venv, never in the project's dependencies.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .peers/bin/python ]; then python3 -m venv .peers; fi
if [ ! -f .peers/.ok ]; then
  .peers/bin/pip install -q --upgrade pip
  .peers/bin/pip install -q "data-selection==1.0.3" "datatrove==0.10.1" spacy nltk
  touch .peers/.ok
fi
