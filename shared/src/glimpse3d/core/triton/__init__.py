"""Models served by Triton Inference Server.

In production the learned backends run inside Triton (``deploy/triton``, one model per learned
backend, each a Triton Python-backend model around the project's own backend class), and every
service selects its ``triton`` backend, which calls that model over gRPC.

- :mod:`.client`: :class:`~.client.TritonModel`, the client every ``triton`` backend uses
  (deadlines, retries on UNAVAILABLE, readiness, error mapping); needs ``tritonclient[grpc]``.
- :mod:`.tensors`: how the project's values (cameras, splats, scalar parameters, errors) travel as
  Triton tensors; plain numpy, shared by both sides.
- :mod:`.python_model`: the model class of the one bootstrap ``deploy/triton/model.py`` (runs inside
  Triton's Python backend; the handler is named in each model's ``config.pbtxt``).
- :mod:`.server`: starts a local ``tritonserver`` on a model repository (tests, ``make triton``).
"""
