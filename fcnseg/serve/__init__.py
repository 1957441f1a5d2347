"""``fcnseg serve``: one model behind an HTTP API and an upload page (Starlette + uvicorn, the ``serve`` extra).

* :mod:`fcnseg.serve.service` — the model (a checkpoint or an ONNX export) in its engine, with the names
  and colours of its classes per head.
* :mod:`fcnseg.serve.uploads` — request bodies read under a byte limit, images decoded under a pixel limit.
* :mod:`fcnseg.serve.worker` — the bounded queue in front of the one thread that runs the model.
* :mod:`fcnseg.serve.app` — the routes (``POST /predict``, ``GET /classes``, ``/health``, ``/``).
"""
