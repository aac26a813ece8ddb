"""Dataflow Flex Template entry point (the image's FLEX_TEMPLATE_PYTHON_PY_FILE): runs the installed pipeline.

The template launcher runs this file as a script, which puts the file's own folder first on ``sys.path``. It lives
outside the ``beam_pipeline`` package, so nothing beside it can shadow a standard-library module; the package itself
is installed in the image and imported by name.
"""

from beam_pipeline.run import main

if __name__ == "__main__":
    main()
