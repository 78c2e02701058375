"""BSP: CDAN's term plus a penalty on the features' largest singular values."""
import torch

from methods.cdan import CDAN
from methods.method import in_fp32


class BSP(CDAN):
    """BSP (Chen et al., "Transferability vs. Discriminability: Batch Spectral Penalization for Adversarial Domain
    Adaptation", ICML 2019), in the paper's BSP+CDAN pairing: CDAN's term (without entropy conditioning) plus
    weight x sum_i^k sigma_i(F_s)^2 + sigma_i(F_t)^2, the k largest squared singular values of the source and of
    the target feature matrix (a batch, one row an image), k = 1 as in the paper, which the features minimise
    directly, not through the reversal. Penalising the dominant directions lets the others, which adversarial
    alignment shrinks, carry more of the features."""
    weight = 2e-4  # the penalty's (the Transfer-Learning-Library's Office-31 script)
    flags = {}  # (CDAN's entropy conditioning is not BSP's)
    colour = "#8c564b"
    label_colours = {}

    @staticmethod
    @in_fp32
    def batch_spectral_penalty(source, target, k=1):
        """sum_i^k sigma_i(F_s)^2 + sigma_i(F_t)^2."""
        return sum(torch.linalg.svdvals(x)[:k].pow(2).sum() for x in (source, target))

    def term(self, features, logits, progress):
        half, feature = len(logits) // 2, list(features.values())[-1]
        return super().term(features, logits, progress) + \
            self.weight * self.batch_spectral_penalty(feature[:half], feature[half:])
