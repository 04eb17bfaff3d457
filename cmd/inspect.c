#include "cmd/cmd.h"
CMD(inspect) { (void)argc; (void)argv; (void)ctx; return cmd_error("inspect: not yet"); }
