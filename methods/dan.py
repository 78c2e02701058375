"""DAN: multi-kernel MMD on every adapted layer and the logits."""
import torch

from methods.method import Method, in_fp32
from methods.parts import gaussian_kernels, mmd


class DAN(Method):
    """DAN (Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML 2015): MMD with the
    sum of Gaussian kernels of parts.gaussian_kernels, summed over every tapped layer and the logits (fc6, fc7, fc8
    of AlexNet; the bottleneck and the logits of ResNet): trade_off x sum_l MK-MMD^2(X_s^l, X_t^l)."""
    bottleneck = 256
    colour = "#ff7f0e"

    @classmethod
    def default_bottleneck(cls, model):
        return 0 if "alexnet" in model else cls.bottleneck  # DAN adapts AlexNet's fc6-fc8 themselves

    @staticmethod
    @in_fp32
    def multi_kernel_mmd(source, target):
        """MMD^2 with DAN's multi-kernel, over all pairs of [source; target]."""
        return mmd(gaussian_kernels(torch.cat([source, target])), len(source))

    def term(self, features, logits, progress):
        half = len(logits) // 2
        return self.trade_off * sum(self.multi_kernel_mmd(x[:half], x[half:]) for x in [*features.values(), logits])
