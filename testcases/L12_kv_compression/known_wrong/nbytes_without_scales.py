"""nbytes counts the codes and the zero points but forgets the scales."""
MODULE = "kv_quant"

QuantizedTensor.nbytes = property(lambda self: self.codes.nbytes + self.zero.nbytes)
