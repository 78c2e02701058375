"""AFN: larger feature norms, step by step, and confident target predictions."""
import torch.nn.functional as F

from methods.method import Method, in_fp32
from methods.parts import entropy


class AFN(Method):
    """AFN's stepwise adaptive feature norm, SAFN (Xu et al., "Larger Norm More Transferable: An Adaptive Feature
    Norm Approach for Unsupervised Domain Adaptation", ICCV 2019), on the layer that feeds the classifier, with
    entropy minimisation on the target's predictions: trade_off x (lambda x sum over both domains of
    mean_i (||f_i|| - (||f_i||' + Delta r))^2 + entropy_weight x mean_i H(softmax(z_i))), ||f_i||' the norm at
    this step held fixed. As AFN's code, each domain goes through the network on its own, so that BatchNorm
    normalises each with its own statistics, which is what AFN's feature norms are measured on."""
    bottleneck = 1000  # (the Transfer-Learning-Library's Office-31 script)
    step, weight = 1.0, 0.05  # Delta r and lambda of SAFN (the same script)
    entropy_weight = 0.1  # target entropy minimisation alongside SAFN (the same script)
    separate_domains = True
    colour = "#393b79"

    @staticmethod
    @in_fp32
    def feature_norm_step(source, target, step=step):
        """SAFN: for the source and the target batch, mean_i (||f_i|| - (||f_i||' + Delta r))^2: each step pulls
        every feature's norm Delta r beyond where it is (the value is always 2 Delta r^2; the gradient is what
        moves)."""
        return sum((x.norm(dim=1) - (x.norm(dim=1).detach() + step)).pow(2).mean() for x in (source, target))

    @staticmethod
    @in_fp32
    def mean_entropy(logits):
        """The mean entropy of the softmax predictions."""
        return entropy(F.softmax(logits, dim=1)).mean()

    def term(self, features, logits, progress):
        half, feature = len(logits) // 2, list(features.values())[-1]
        return self.trade_off * (self.weight * self.feature_norm_step(feature[:half], feature[half:]) +
                                 self.entropy_weight * self.mean_entropy(logits[half:]))
