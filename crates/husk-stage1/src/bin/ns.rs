fn main() {
    std::process::exit(husk_stage1::ns::main(std::env::args_os().collect()));
}
