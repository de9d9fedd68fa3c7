#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)
fn main() {
    std::process::exit(husk_stage1::kvm::main(std::env::args_os().collect()));
}
