//! strata's runner: rootfs assembly from unpacked layers and container processes
//! (namespaces, cgroups). The process model lands with the runner issue.
