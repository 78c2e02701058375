"""DANN: a domain discriminator behind gradient reversal."""
from methods.method import Method
from methods.parts import ReverseGradient, discriminator, domain_loss, ramp


class DANN(Method):
    """DANN (Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016): a domain discriminator D
    (parts.discriminator) on the layer that feeds the classifier, behind a gradient reversal layer. The term is D's
    binary cross-entropy, source 1 and target 0, -E_s log D(f) - E_t log(1 - D(f)); the features receive its gradient
    reversed and scaled by trade_off x (2 / (1 + exp(-10 p)) - 1), the ramp over training progress p, so that they
    learn to fool D while D learns at full strength."""
    bottleneck = 256
    colour = "#d62728"

    def __init__(self, feature_size, num_classes, trade_off, features):
        super().__init__(feature_size, num_classes, trade_off, features)
        self.discriminator = discriminator(feature_size)

    def term(self, features, logits, progress):
        f = ReverseGradient.apply(list(features.values())[-1], self.trade_off * ramp(progress))
        return domain_loss(self.discriminator(f))
