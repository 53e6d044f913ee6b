"""Small plugin modules that tests load by dotted name through ``fastgw.plugins.registry``."""
