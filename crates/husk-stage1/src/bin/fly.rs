fn main() {
    std::process::exit(husk_stage1::fly::main(std::env::args_os().collect()));
}
