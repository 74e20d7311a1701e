"""SEA-RAFT optical flow (Wang, Lipson and Deng, *SEA-RAFT: Simple, Efficient, Accurate RAFT for Optical
Flow*, ECCV 2024) in pure PyTorch, loading the official checkpoints as they are.

* :mod:`.network`: the network, whose state-dict keys are those of the official ``RAFT`` class;
* :mod:`.presets`: the official configurations (``M``, ``S``) and a ``tiny`` one for tests;
* :mod:`.weights`: reading an official ``.pth`` safely, and seeded random weights;
* :mod:`.flow`: :class:`~easi3r.contracts.FlowModel` on top, registered as the flow model ``sea_raft``.

Importing this package imports nothing; the modules import torch.
"""
