"""Model zoo: the N2UQ ResNets and MobileNetV2 (SPEC 4), their full-precision
twins laid out like torchvision, CIFAR ResNet-20 and a tiny CNN, by name.

>>> from flax import nnx
>>> from n2uq_jax import models, nn
>>> policy = nn.QuantPolicy(default=nn.QuantSpec.uniform_bits(2))
>>> model = models.create_model('small_cnn', num_classes=10, policy=policy, rngs=nnx.Rngs(0))
"""

from n2uq_jax.models.cifar import CifarResNet, PreActConvBN, SmallCNN
from n2uq_jax.models.common import Downsample, batch_norm, count_params, transfer_params
from n2uq_jax.models.mobilenet_v2 import (ConvBNAct, InvertedResidual, MobileNetV2,
                                          N2UQInvertedResidual)
from n2uq_jax.models.registry import available_models, create_model
from n2uq_jax.models.resnet import (BasicBlock, Bottleneck, N2UQBasicBlock, N2UQBottleneck,
                                    ResNet)
