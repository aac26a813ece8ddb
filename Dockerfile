# One image for the Dataflow Flex Template launcher and its workers: pinned, CPU-only, package installed,
# no data and no credentials inside. Build and launch scripts arrive with the cloud issue (#5).
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

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/beam_pipeline/run.py
ENTRYPOINT ["/opt/apache/beam/boot"]
