ctypedef fused floating:
    float
    double
