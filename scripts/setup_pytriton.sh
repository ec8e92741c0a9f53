#!/usr/bin/env bash
# Filled in by the cloud core: builds .venv-triton with nvidia-pytriton.
exit 0
