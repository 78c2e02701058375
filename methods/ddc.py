"""DDC: the squared distance between the source's and the target's mean features."""
from methods.method import Method, in_fp32


class DDC(Method):
    """DDC (Tzeng et al., "Deep Domain Confusion: Maximizing for Domain Invariance", arXiv 2014): MMD with a linear
    kernel on the layer that feeds the classifier (its 256-wide "adaptation layer": our bottleneck; AlexNet without
    one: fc7), trade_off x || mean(x_s) - mean(x_t) ||^2."""
    bottleneck = 256
    colour = "#1f77b4"

    @staticmethod
    @in_fp32
    def linear_mmd(source, target):
        """|| mean(x_s) - mean(x_t) ||^2: MMD with a linear kernel."""
        return (source.mean(0) - target.mean(0)).pow(2).sum()

    def term(self, features, logits, progress):
        half, feature = len(logits) // 2, list(features.values())[-1]
        return self.trade_off * self.linear_mmd(feature[:half], feature[half:])
