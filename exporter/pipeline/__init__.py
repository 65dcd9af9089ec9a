"""The stages ``matte`` (and ``bench --matte``, and a server) are wired from, each with one job:

- ``sources``: frames from an image, a folder, a video, a camera, a network stream or a pipe;
- ``prepare``: letterboxing to the model's size, the background's alignment, compositing;
- ``infer``: requests in flight over a runner, results in order;
- ``sinks``: a video, PNGs, raw frames on a pipe;
- ``writebehind``: the writer threads, their slots and their failures;
- ``timings``: where the time went, from every thread.

Torch-free, and each stage is tested without a model.
"""
