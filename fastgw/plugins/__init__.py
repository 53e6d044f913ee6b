"""fastgw plugins: one module per plugin (see fastgw/plugins/base.py for the contract)."""
