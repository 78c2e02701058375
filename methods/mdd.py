"""MDD: a second classifier, behind gradient reversal, that disagrees with the classifier on the target."""
import torch
import torch.nn.functional as F
from torch import nn

from methods.method import Method, in_fp32
from methods.parts import ReverseGradient, ramp


class MDD(Method):
    """MDD (Zhang et al., "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019): the loss of an
    adversarial classifier f' on the layer that feeds the classifier, -D_gamma = gamma E_s CE(f'(x), h_f(x)) -
    E_t log(1 - softmax(f'(x))[h_f(x)]), where h_f is the main classifier's predicted class (an argmax: no gradient
    reaches the main classifier). f' learns to agree with h_f on the source and to disagree on the target; the
    features, behind gradient reversal (trade_off x reversal x DANN's ramp), make that disagreement impossible. f'
    is of the main classifier's kind, as the theory asks: here one linear layer."""
    bottleneck = 1024  # (the Transfer-Learning-Library's Office-31 script)
    margin = 4.0  # gamma on Office-31 (the same script)
    reversal = 0.1  # the largest reversed-gradient coefficient (the library's warm-start reversal rises to 0.1)
    colour = "#17becf"

    def __init__(self, feature_size, num_classes, trade_off, features):
        super().__init__(feature_size, num_classes, trade_off, features)
        self.adversary = nn.Linear(feature_size, num_classes)

    @staticmethod
    @in_fp32
    def margin_disparity(source_logits, source_adversary, target_logits, target_adversary, margin=margin):
        """-D_gamma from the logits of the classifier and of f' on the source and on the target. The log is
        shifted as the Transfer-Learning-Library's shift_log does, log(min(1 - p + 1e-6, 1)), so that a certain f'
        (p = 1) stays finite."""
        source = F.cross_entropy(source_adversary, source_logits.argmax(1))
        agreement = F.softmax(target_adversary, dim=1).gather(1, target_logits.argmax(1, keepdim=True)).squeeze(1)
        return margin * source - torch.log((1 - agreement + 1e-6).clamp(max=1)).mean()

    def term(self, features, logits, progress):
        half = len(logits) // 2
        f = ReverseGradient.apply(list(features.values())[-1], self.trade_off * ramp(progress) * self.reversal)
        adversary = self.adversary(f)
        return self.margin_disparity(logits[:half], adversary[:half], logits[half:], adversary[half:])
