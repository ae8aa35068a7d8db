"""The program around the library: the ``hybridhash`` command and what it runs.

Training runs and comparison grids, evaluation runs and their reports, encode runs into
collections, and the HTTP service live here. They import the library (``hybridhash.models``,
``methods``, ``data``, ``codes``, ``metrics``, ``index``, ``collection``, ``retrieval``, the inference
engines); the library never imports them (``tests/test_layout.py``), so that it can be used from
Python without the program.
"""
