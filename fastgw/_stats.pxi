# part of fastgw/_core.pyx (see its docstring)
