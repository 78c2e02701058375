"""Deep CORAL: the distance between the source's and the target's covariances of the logits."""
from methods.method import Method, in_fp32


class CORAL(Method):
    """Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016
    workshops), on the last layer (fc8 in the paper): the logits. trade_off x || C_s - C_t ||_F^2 / (4 d^2), with
    C = (X^T X - (1^T X)^T (1^T X) / n) / (n - 1)."""
    colour = "#2ca02c"
    batch_of_two = "Deep CORAL's covariances divide by the batch size minus one"

    @staticmethod
    @in_fp32
    def coral(source, target):
        """|| C_s - C_t ||_F^2 / (4 d^2) of the rows' covariances."""
        def covariance(x):
            centred = x - x.mean(0, keepdim=True)
            return centred.T @ centred / (len(x) - 1)

        d = source.shape[1]
        return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)

    def term(self, features, logits, progress):
        half = len(logits) // 2
        return self.trade_off * self.coral(logits[:half], logits[half:])
