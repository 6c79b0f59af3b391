"""The pipeline stages. Each is a plain function of a :class:`StageContext`.

quantize -> evaluate -> benchmark run per scheme; signoff and track run per sweep.
"""
