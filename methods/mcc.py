"""MCC: the confusion between classes in the target's predictions."""
import torch
import torch.nn.functional as F

from methods.method import Method, in_fp32
from methods.parts import entropy


class MCC(Method):
    """MCC (Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020), on a batch of target
    logits Z (B images x K classes): the predictions Y = softmax(Z / T); each image weighted by
    W_i = B (1 + exp(-H(Y_i))) / sum_i' (1 + exp(-H(Y_i'))), H the entropy, so confident predictions count more
    (the weights take no gradient); the class confusion C = Y^T W Y, each row normalised to sum 1; the term is
    trade_off x its off-diagonal mass over K: sum_j sum_j'!=j C_jj' / K."""
    bottleneck = 1024  # (the Transfer-Learning-Library's Office-31 script)
    temperature = 2.5  # T (the same script)
    colour = "#bcbd22"

    @staticmethod
    @in_fp32
    def class_confusion(logits, temperature=temperature):
        """sum_j sum_j'!=j C_jj' / K of a batch of target logits."""
        y = F.softmax(logits / temperature, dim=1)
        w = (1 + torch.exp(-entropy(y))).detach()
        w = len(y) * w / w.sum()
        confusion = (y * w[:, None]).T @ y
        confusion = confusion / confusion.sum(1, keepdim=True)
        return (confusion.sum() - confusion.trace()) / y.shape[1]

    def term(self, features, logits, progress):
        return self.trade_off * self.class_confusion(logits[len(logits) // 2:])  # the target's predictions only
