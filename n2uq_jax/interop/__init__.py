"""PyTorch checkpoints in and out: torchvision models and the official N2UQ code.

=============================================  =========================================
function                                       what it does
=============================================  =========================================
``load_torchvision(source, *, arch,            torchvision ``resnet18/34/50/101`` or
num_classes=1000)``                            ``mobilenet_v2`` -> the FP twin here
``to_torchvision_state_dict(model)``           the inverse
``load_official_n2uq(source, *, arch, bits,    official N2UQ ``resnet18/34/50`` or
quantize_downsample, num_classes=1000)``       ``mobilenet_v2`` (4 bits) -> N2UQ model
``to_official_n2uq_state_dict(model)``         the inverse
=============================================  =========================================

``source`` is a ``.pth``/``.pth.tar``/``.pt`` path (needs PyTorch: ``pip install
-e .[torch]``) or a mapping of names to arrays. State_dicts come out as
``{name: np.ndarray}``; ``torch.save({k: torch.from_numpy(v) ...}, path)`` writes
them. A state_dict that does not fit raises :class:`StateDictMismatchError` listing
every missing key, unexpected key and shape mismatch.

>>> import torch, torchvision
>>> from n2uq_jax import interop
>>> torch.save(torchvision.models.resnet18(weights='DEFAULT').state_dict(), 'r18.pth')
>>> model = interop.load_torchvision('r18.pth', arch='resnet18')   # NHWC in, logits out
"""

from n2uq_jax.interop.official import load_official_n2uq, to_official_n2uq_state_dict
from n2uq_jax.interop.state_dict import StateDictMismatchError, read_state_dict
from n2uq_jax.interop.torchvision import load_torchvision, to_torchvision_state_dict
