fn main() {
    eprintln!("bitscale-operator: not built yet");
    std::process::exit(1);
}
