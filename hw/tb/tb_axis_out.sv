// Unit-test wrapper: bnnc_axis_out with out_data = {tlast, tdata}.
module tb_axis_out #(
    parameter int EB = 8,
    parameter int C = 3,
    parameter int BE = 2,
    parameter int PIXELS = 2,
    parameter int TW = 16
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [C*EB-1:0] in_data,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [    TW:0] out_data
);
  bnnc_axis_out #(.EB(EB), .C(C), .BE(BE), .PIXELS(PIXELS), .TW(TW)) dut (
      .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
      .m_axis_tvalid(out_valid), .m_axis_tready(out_ready), .m_axis_tdata(out_data[TW-1:0]),
      .m_axis_tlast(out_data[TW])
  );
endmodule
