//! Response writing: status line, the headers every gateway response carries, and bodies.
