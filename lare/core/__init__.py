"""The method: what a reader of the paper opens first.

Encoders (:mod:`.encoders`), Eq. (1)-(5) (:mod:`.losses`), f_Box and box sampling (:mod:`.box`),
the linear probe and zero-shot (:mod:`.probe`), the LADS baseline (:mod:`.lads`), the training loop
they share (:mod:`.train`) and the L-BFGS reference probe (:mod:`.reference`). It imports nothing
from the other rooms of the package (data, compare, pipeline).
"""
